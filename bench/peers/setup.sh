#!/usr/bin/env bash
# Create one venv per peer server under .work/peers/ (gitignored), so their pinned
# dependencies never touch the project's .venv. Idempotent: a venv whose marker file
# records the same requirement line is left alone.
#
#   bench/peers/setup.sh            # both peers
#   bench/peers/setup.sh mlserver   # only one
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS="${ROOT}/.work/peers"
PYTHON="${PYTHON:-python3}"

# MLServer 1.7.1's inference worker dies with "There is no current event loop" under
# uvloop 0.23, so uvloop is pinned; neither peer ships an ONNX runtime of its own.
declare -A REQUIREMENTS=(
    [mlserver]="mlserver==1.7.1 uvloop==0.21.0 onnxruntime numpy"
    [kserve]="kserve==0.21.0 onnxruntime numpy"
)

make_venv() {
    local name="$1" requirements="${REQUIREMENTS[$1]}"
    local venv="${PEERS}/${name}" marker="${PEERS}/${name}/.requirements"
    if [[ -f "${marker}" && "$(cat "${marker}")" == "${requirements}" ]]; then
        echo "${name}: up to date (${venv})"
        return
    fi
    echo "${name}: installing ${requirements} into ${venv}"
    "${PYTHON}" -m venv "${venv}"
    "${venv}/bin/pip" install --quiet --upgrade pip
    # shellcheck disable=SC2086  # word splitting of the requirement list is intended
    "${venv}/bin/pip" install --quiet ${requirements}
    echo "${requirements}" > "${marker}"
}

if (( $# > 0 )); then names=("$@"); else names=(mlserver kserve); fi
mkdir -p "${PEERS}"
for name in "${names[@]}"; do
    [[ -n "${REQUIREMENTS[${name}]:-}" ]] || { echo "unknown peer: ${name}" >&2; exit 2; }
    make_venv "${name}"
done
