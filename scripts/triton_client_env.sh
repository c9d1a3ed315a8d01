#!/usr/bin/env bash
# Create .venv-triton/ with the real tritonclient[grpc], for the tests and benchmarks that
# check the Open Inference Protocol API with NVIDIA's own client.
#
# Why a separate venv: tritonclient 2.73 pins protobuf<7 while our generated code needs
# protobuf>=7.35, and, whatever the versions, its service_pb2 and our inference/*_pb2 declare
# the same message names ("inference.ModelInferRequest", ...) in differently named files, so
# one process cannot import both ("duplicate symbol 'inference.DataType'"). Tests therefore
# run client scripts with .venv-triton/bin/python in a subprocess against our server.
#
# Idempotent: does nothing when .venv-triton already has the pinned version.
# Usage: scripts/triton_client_env.sh  (prints the venv's python path on success)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${TRITON_VENV:-${ROOT}/.venv-triton}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS=("tritonclient[grpc]==2.73.0" "numpy")

if [[ -x "${VENV}/bin/python" ]] \
    && "${VENV}/bin/python" -c "import tritonclient.grpc.aio, numpy" 2>/dev/null \
    && [[ "$("${VENV}/bin/python" -c 'from importlib.metadata import version; print(version("tritonclient"))')" == "2.73.0" ]]; then
    echo "${VENV}/bin/python"
    exit 0
fi

"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >&2
"${VENV}/bin/python" -c "import tritonclient.grpc, tritonclient.grpc.aio, numpy" >&2
echo "${VENV}/bin/python"
