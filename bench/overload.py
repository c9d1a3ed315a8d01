"""A flood past ``--max-concurrent-calls``: what one worker answers, refuses and holds.

Starts ``python -m serving`` from ``--ours-root`` (one worker, 127.0.0.1, a free port,
``--max-concurrent-calls``), floods it with bench/loadgen.cc's closed loops of domain
``Classify`` calls (callers retry at once: no backoff), then reads the server's peak memory
(VmHWM) and stops it. Prints one markdown row per run: answered and refused calls per second,
the answered calls' p50, client and server CPU, peak RSS. Alternate two checkouts for an A/B.

Usage: python bench/overload.py REPOSITORY [--ours-root DIR] [--callers 400] [--images 16]
       [--max-concurrent-calls 8] [--duration 6]
"""

import argparse
import subprocess
from pathlib import Path

import native_loadgen
from run import wait_ready
from startup import free_port, stop

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository")
    parser.add_argument("--ours-root", type=Path, default=ROOT, help="checkout whose server runs")
    parser.add_argument("--callers", type=int, default=400)
    parser.add_argument("--images", type=int, default=16, help="images per call")
    parser.add_argument("--max-concurrent-calls", type=int, default=8)
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [str(args.ours_root / ".venv" / "bin" / "python"), "-m", "serving", "--model-repository",
         str(Path(args.repository).resolve()), "--host", "127.0.0.1", "--port", str(port),
         "--http-port", "0", "--poll-interval", "0", "--workers", "1", "--log-level", "WARNING",
         "--max-request-images", str(max(args.images, 1024)),
         "--max-concurrent-calls", str(args.max_concurrent_calls)],
        cwd=args.ours_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"127.0.0.1:{port}", server, 30)
        result = native_loadgen.run(f"127.0.0.1:{port}", "domain", "mlp", args.images,
                                    concurrency=args.callers, warmup_s=2,
                                    duration_s=args.duration, channels=8, server_pid=server.pid)
        peak = peak_rss_mb(server.pid)
    finally:
        stop(server, 30)
    errors = dict(result["errors"])
    refused = errors.pop("RESOURCE_EXHAUSTED", 0) / args.duration
    print("| checkout | callers x images | answered/s | p50 ms | refused/s | other errors "
          "| client CPU s | server CPU s | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.ours_root} | {args.callers} x {args.images} | "
          f"{result['requests_per_s']:,.0f} | {result['p50_ms']:.0f} | {refused:,.0f} | "
          f"{errors or ''} | {result['client_cpu_s']:.1f} | {result['server_cpu_s'] or 0:.1f} | "
          f"{peak:.0f} |")


if __name__ == "__main__":
    main()
