#!/usr/bin/env bash
# The whole benchmark, one command, bounded to 10 minutes (bench/run.py says what it measures):
#   bench/run.sh [--repository DIR] [--duration S] [--ours-root DIR] [--server-flags "..."]
#                [--only-ours] [--label TEXT] [--out FILE] [--json FILE]
# Sets up what it needs first (idempotent; a second run installs nothing):
#   - g++, pkg-config, libgrpc++-dev (Debian) for the C++ load generator bench/loadgen.cc;
#   - the project's .venv (./run's set-up) if missing;
#   - the peers' venvs (bench/peers/setup.sh) and .venv-triton with tritonclient
#     (scripts/triton_client_env.sh) for the one-connection client bench/triton_load.py;
#   - the model repository .work/bench-repo, trained with fmnist-train if it is missing
#     (~2-3 min; only for the default --repository).
# Wait for a quiet machine first if other jobs run (bench/wait_quiet.sh): figures taken beside
# other work say little.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in g++ pkg-config libgrpc++-dev; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || ./run test --collect-only -q >&2  # ./run sets up .venv first
bench/peers/setup.sh >&2
scripts/triton_client_env.sh >/dev/null

repository=.work/bench-repo
for arg in "$@"; do
    case "$arg" in --repository|--repository=*) repository="" ;; esac
done
if [ -n "$repository" ] && [ ! -e "$repository/mlp/1/model.onnx" ]; then
    echo "==> fmnist-train --out $repository (the models the benchmark serves)" >&2
    .venv/bin/fmnist-train --out "$repository" --progress none >&2
fi
exec timeout 600 .venv/bin/python bench/run.py "$@"
