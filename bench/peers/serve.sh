#!/usr/bin/env bash
# Start one peer server on a model file, Open Inference Protocol gRPC on 127.0.0.1:GRPC_PORT,
# in the foreground (its venv comes from bench/peers/setup.sh). The model is served as "mlp".
#
#   bench/peers/serve.sh mlserver|kserve MODEL.onnx GRPC_PORT
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PEERS="$(cd "${HERE}/../.." && pwd)/.work/peers"
peer="${1:?usage: serve.sh mlserver|kserve MODEL.onnx GRPC_PORT}"
model_file="$(realpath "${2:?model file missing}")"
grpc_port="${3:?gRPC port missing}"
http_port=$((grpc_port + 1))

case "${peer}" in
    mlserver)
        # Settings come from mlserver_onnx/settings.json; env vars override per run.
        export MLSERVER_GRPC_PORT="${grpc_port}" MLSERVER_HTTP_PORT="${http_port}"
        export MLSERVER_MODEL_URI="${model_file}"
        exec "${PEERS}/mlserver/bin/mlserver" start "${HERE}/mlserver_onnx"
        ;;
    kserve)
        exec "${PEERS}/kserve/bin/python" "${HERE}/kserve_onnx.py" --model_name mlp \
            --model_file "${model_file}" --grpc_port "${grpc_port}" --http_port "${http_port}" \
            --configure_logging false
        ;;
    *)
        echo "unknown peer: ${peer} (mlserver or kserve)" >&2
        exit 2
        ;;
esac
