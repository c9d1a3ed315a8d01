"""How long the server takes from process start to SERVING, and how much memory it holds.

Starts ``python -m serving`` on a model repository (127.0.0.1, a free port) ``--runs`` times;
each time measures the seconds from ``Popen`` until the gRPC health service answers SERVING
(polled every 5 ms), then the resident memory (VmRSS) and the proportional memory (PSS) of
every server process, then stops it with SIGTERM. Prints a markdown table (or JSON) with the
median start time, the largest RSS of a serving process and the sums over processes: the RSS
sum counts the pages the workers share (libraries) once per process, the PSS sum once.

Usage: python bench/startup.py REPOSITORY [--workers N ...] [--runs 5]
       (--workers 0: the server's default)
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from proc_cpu import process_tree

POLL_S = 0.005


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status_mb(path: str, key: str) -> float:
    """The ``key:`` line (in kB) of a /proc file, in MB (0 if the process has exited)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid``."""
    return _status_mb(f"/proc/{pid}/status", "VmRSS")


def pss_mb(pid: int) -> float:
    """Proportional memory of ``pid``: each page shared with other processes (the libraries
    every worker maps) counted once across them, so a sum over processes is the memory they
    hold."""
    return _status_mb(f"/proc/{pid}/smaps_rollup", "Pss")


def stop(process: subprocess.Popen, seconds: float) -> None:
    """SIGTERM (a server drains and exits), then SIGKILL if it is still there after ``seconds``."""
    process.terminate()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_ready(process: subprocess.Popen | None, ready, seconds: float,
                     poll_s: float = 0.05) -> None:
    """Polls ``ready()`` (a check that returns False while the server cannot answer) until it
    is true; SystemExit, one line, if the server ``process`` (None: one this script did not
    start) exits first (where it writes to this process's stderr, its own line above says
    why) or is not ready in ``seconds``: a script that went on measured a server that was not
    there (refused connections, a table), or said so in a traceback."""
    end = time.monotonic() + seconds
    while not ready():
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode} before it "
                             "was ready")
        if time.monotonic() > end:
            if process is not None:
                stop(process, 5)
            raise SystemExit(f"the server was not ready in {seconds:g} s")
        time.sleep(poll_s)


def http_ready(port: int) -> bool:
    """A ``ready`` check for ``wait_until_ready``: the Open Inference Protocol's
    ``/v2/health/ready`` on 127.0.0.1:``port`` answers 200 (ours, MLServer's, KServe's)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/v2/health/ready")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def health_serving(channel: grpc.Channel):
    """A ``ready`` check for ``wait_until_ready``: grpc.health.v1 says SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        try:
            return stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == (
                health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False
    return serving


def one_start(repository: str, workers: int, *, python: str = sys.executable,
              flags: tuple[str, ...] = (), cwd: str | None = None
              ) -> tuple[float, list[tuple[float, float]]]:
    """One start with ``python -m serving`` in ``cwd`` (``-m`` imports from there first);
    ``workers`` 0 leaves the server's default. Returns the seconds and each process's (RSS,
    PSS) in MB."""
    port = free_port()
    command = [python, "-m", "serving", "--model-repository", repository, "--host",
               "127.0.0.1", "--port", str(port), "--http-port", str(free_port()),  # not 8080's
               "--poll-interval", "0", "--log-level",
               "WARNING", *(["--workers", str(workers)] if workers else []), *flags]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=cwd)
    try:
        # retry connecting every few ms, not after gRPC's default 1 s back-off
        options = [(f"grpc.{kind}_reconnect_backoff_ms", 5) for kind in ("initial", "min", "max")]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            wait_until_ready(process, health_serving(channel), 60, POLL_S)
        elapsed = time.perf_counter() - started
        time.sleep(1.0 if workers != 1 else 0.2)  # let every worker finish loading
        memory = [(rss_mb(pid), pss_mb(pid)) for pid in process_tree([process.pid])]
        return elapsed, memory
    finally:
        stop(process, 30)


def measure(repository: str, workers: int, runs: int, *, python: str = sys.executable,
            flags: tuple[str, ...] = (), cwd: str | None = None) -> dict:
    """Median start, largest RSS and the most memory of ``runs`` starts (``workers`` 0: the
    server's default)."""
    times, largest, total, proportional = [], 0.0, 0.0, 0.0
    for _ in range(runs):
        elapsed, memory = one_start(repository, workers, python=python, flags=tuple(flags),
                                    cwd=cwd)
        times.append(elapsed)
        largest = max(largest, *(rss for rss, _ in memory))
        total = max(total, sum(rss for rss, _ in memory))
        proportional = max(proportional, sum(pss for _, pss in memory))
    return {"workers": workers or "default", "flags": " ".join(flags), "runs": runs,
            "start_s_median": statistics.median(times), "start_s_max": max(times),
            "largest_process_rss_mb": largest,
            "all_processes_rss_mb": total, "all_processes_pss_mb": proportional,
            "loadavg_1m": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(args.repository, workers, args.runs) for workers in args.workers]
    if args.json:
        print(json.dumps(results))
        return
    print("| workers | start to SERVING, median (max) s | largest process RSS MB "
          "| all processes RSS MB | all processes PSS MB |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['workers']} | {r['start_s_median']:.2f} ({r['start_s_max']:.2f}) "
              f"| {r['largest_process_rss_mb']:.0f} | {r['all_processes_rss_mb']:.0f} "
              f"| {r['all_processes_pss_mb']:.0f} |")


if __name__ == "__main__":
    main()
