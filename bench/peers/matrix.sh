#!/usr/bin/env bash
# Measure each peer server with bench/loadgen.py over the standard matrix and print markdown:
# batch 1 at concurrency 1, 8 and 32, and batch 64 at concurrency 4. One peer runs at a time,
# on 127.0.0.1 only, and is stopped (by its own pid) before the next starts.
#
#   bench/peers/matrix.sh MODEL.onnx [DURATION_S] [PEERS...]    (default 10 s, mlserver kserve)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
PYTHON="${ROOT}/.venv/bin/python"
model_file="${1:?usage: matrix.sh MODEL.onnx [DURATION_S] [PEERS...]}"
duration="${2:-10}"
shift $(( $# >= 2 ? 2 : 1 ))
if (( $# > 0 )); then peers=("$@"); else peers=(mlserver kserve); fi
port=18700
MATRIX=("1 1" "1 8" "1 32" "64 4")

wait_ready() {
    "${PYTHON}" - "$1" <<'PY'
import sys, time, grpc
from inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pbg
deadline = time.time() + 60
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = pbg.GRPCInferenceServiceStub(channel)
    while True:
        try:
            if stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=2).ready:
                break
        except grpc.RpcError:
            pass
        if time.time() > deadline:
            sys.exit(f"{sys.argv[1]} not ready after 60 s")
        time.sleep(0.5)
PY
}

header=--header
for peer in "${peers[@]}"; do
    port=$((port + 10))
    "${HERE}/serve.sh" "${peer}" "${model_file}" "${port}" > "${ROOT}/.work/peers/${peer}.log" 2>&1 &
    server=$!
    trap 'kill "${server}" 2>/dev/null || true' EXIT
    wait_ready "127.0.0.1:${port}"
    for point in "${MATRIX[@]}"; do
        read -r batch concurrency <<< "${point}"
        "${PYTHON}" "${ROOT}/bench/loadgen.py" --target "127.0.0.1:${port}" --model mlp \
            -b "${batch}" -c "${concurrency}" -d "${duration}" -w 2 --server-pid "${server}" \
            --label "${peer}" ${header}
        header=""
    done
    kill "${server}"
    wait "${server}" 2>/dev/null || true
    trap - EXIT
done
