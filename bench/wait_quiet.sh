#!/usr/bin/env bash
# Waits until the machine is quiet enough to measure: no process matching PATTERN (default:
# test suites, training, containers) and a 1-minute load average below MAX_LOAD. Polls every
# 30 s; gives up (exit 1) after MINUTES. Prints `uptime` when it returns.
#   bench/wait_quiet.sh [MAX_LOAD=0.8] [MINUTES=40] [PATTERN="pytest|fmnist-train|podman"]
set -euo pipefail
max_load="${1:-0.8}"
minutes="${2:-40}"
pattern="${3:-pytest|fmnist-train|podman}"
deadline=$((SECONDS + 60 * minutes))
while :; do
    load="$(cut -d' ' -f1 /proc/loadavg)"
    busy=""
    for pid in $(pgrep -f "$pattern" || true); do  # not this script (PATTERN is in its args)
        grep -q wait_quiet "/proc/$pid/cmdline" 2>/dev/null || busy="$busy $pid"
    done
    if [ -z "$busy" ] && awk -v l="$load" -v m="$max_load" 'BEGIN { exit !(l < m) }'; then
        uptime
        exit 0
    fi
    if (( SECONDS >= deadline )); then
        echo "not quiet after ${minutes} min: load ${load}; matching pids:${busy}" >&2
        exit 1
    fi
    sleep 30
done
