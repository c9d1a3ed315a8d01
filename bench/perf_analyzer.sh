#!/usr/bin/env bash
# Run Triton's perf_analyzer (C++ load tool, ~2-3x cheaper per request than a Python client)
# on this Debian 12 machine, without changing anything on the system.
#
# The real perf-analyzer 2.60.0 wheel is built for glibc 2.38 (Debian 12 has 2.36; plain
# `pip install perf-analyzer` silently installs a 0.1.0 placeholder). So the wheel is unpacked
# into .work/perf_analyzer/ together with Debian trixie's libc6, libstdc++6 and libgcc-s1
# (fetched with apt-get download through a private apt state), and the binary is started
# through that newer dynamic loader. First run downloads (~20 MB); later runs reuse it.
#
# perf_analyzer calls ModelConfig first, so the target must answer Triton's ModelConfig RPC.
# Usage: bench/perf_analyzer.sh [perf_analyzer args...], e.g.
#   bench/perf_analyzer.sh -m mlp -u 127.0.0.1:8001 -i grpc -b 1 --concurrency-range 8:8 \
#       --measurement-interval 5000 --input-data zero
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${ROOT}/.work/perf_analyzer"
VERSION="2.60.0"
BINARY="${DIR}/wheel/perf_analyzer/bin/perf_analyzer"
LIBS="${DIR}/root/usr/lib/x86_64-linux-gnu"
LOADER="${LIBS}/ld-linux-x86-64.so.2"
PIP="${ROOT}/.venv/bin/pip"

fetch_wheel() {
    [[ -x "${BINARY}" ]] && return
    mkdir -p "${DIR}/download"
    "${PIP}" download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_38_x86_64 --python-version 3.11 \
        -d "${DIR}/download" "perf-analyzer==${VERSION}" >&2
    rm -rf "${DIR}/wheel"
    python3 -m zipfile -e "${DIR}/download/perf_analyzer-${VERSION}-"*.whl "${DIR}/wheel"
    chmod +x "${BINARY}"
}

fetch_libraries() {
    [[ -e "${LOADER}" ]] && return
    local apt="${DIR}/apt" mirror
    # The same Debian mirror the machine already uses, for the trixie suite.
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
        || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    mkdir -p "${apt}/lists/partial" "${apt}/cache/archives/partial" "${apt}/debs" "${apt}/parts"
    echo "deb ${mirror} trixie main" > "${apt}/sources.list"
    local options=(-o "Dir::State::Lists=${apt}/lists" -o "Dir::Etc::SourceList=${apt}/sources.list"
                   -o "Dir::Etc::SourceParts=${apt}/parts" -o "Dir::Cache=${apt}/cache"
                   -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    apt-get "${options[@]}" update -qq >&2
    (cd "${apt}/debs" && apt-get "${options[@]}" download -qq libc6 libstdc++6 libgcc-s1 >&2)
    rm -rf "${DIR}/root"
    for deb in "${apt}/debs/"*.deb; do dpkg -x "${deb}" "${DIR}/root"; done
}

fetch_wheel
fetch_libraries
exec "${LOADER}" --library-path "${LIBS}:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
    "${BINARY}" "$@"
