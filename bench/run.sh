#!/usr/bin/env bash
# The whole benchmark, one command, bounded to 10 minutes (bench/run.py says what it measures):
#   bench/run.sh [--repository DIR] [--duration S] [--out FILE]
# Needs the peers' venvs (bench/peers/setup.sh, idempotent) and a trained model repository
# (default .work/bench-repo; made with `.venv/bin/fmnist-train --out .work/bench-repo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bench/peers/setup.sh >&2
exec timeout 600 .venv/bin/python bench/run.py "$@"
