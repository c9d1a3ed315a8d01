"""How much memory a burst of large HTTP requests takes: the figure a container's memory limit
has to cover.

Starts ``python -m serving`` (127.0.0.1, free ports, ``--workers`` as given, the environment
of this process plus ``--env`` assignments, e.g. ``MALLOC_MMAP_THRESHOLD_=131072``), then sends
``--calls`` Open Inference Protocol JSON requests of ``--images`` images each, all at once,
``--rounds`` times; samples the PSS of every server process every 50 ms. Prints a table: the
answers' status codes, the peak during each burst and what is still held after it.

Usage: python bench/http_memory.py REPOSITORY [--calls 64] [--images 1024] [--env K=V ...]
"""

import argparse
import collections
import http.client
import json
import os
import subprocess
import sys
import threading
import time

from proc_cpu import process_tree
from startup import free_port, http_ready, pss_mb, stop, wait_until_ready


def tree_pss_mb(pid: int) -> float:
    return sum(pss_mb(process) for process in process_tree([pid]))


def burst(port: int, body: bytes, calls: int, pid: int) -> tuple[collections.Counter, float]:
    """``calls`` requests at once; their status codes and the peak PSS meanwhile."""
    codes, peak, done = collections.Counter(), [tree_pss_mb(pid)], threading.Event()
    counting = threading.Lock()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss_mb(pid))
            time.sleep(0.05)

    def call():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            connection.request("POST", "/v2/models/mlp/infer", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            outcome = response.status
        except OSError as error:
            outcome = type(error).__name__
        finally:
            connection.close()
        with counting:
            codes[outcome] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=call) for _ in range(calls)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    done.set()
    sampler.join()
    return codes, max(peak[0], tree_pss_mb(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository")
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024, help="per request")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--env", nargs="*", default=[], metavar="K=V")
    args = parser.parse_args()
    port = free_port()
    environment = os.environ | dict(item.split("=", 1) for item in args.env)
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", args.repository, "--host",
         "127.0.0.1", "--port", "0", "--http-port", str(port), "--workers", str(args.workers),
         "--poll-interval", "0", "--log-level", "WARNING"], env=environment)
    try:
        wait_until_ready(process, lambda: http_ready(port), 30)
        time.sleep(1.0)  # every worker loaded
        body = json.dumps({"inputs": [{
            "name": "images", "datatype": "UINT8", "shape": [args.images, 28, 28],
            "data": [pixel % 256 for pixel in range(args.images * 784)]}]}).encode()
        print(f"{args.calls} calls of {args.images} images ({len(body) / 1e6:.1f} MB of JSON "
              f"each), --workers {args.workers}, env {' '.join(args.env) or '-'}; idle "
              f"{tree_pss_mb(process.pid):.0f} MB PSS\n")
        print("| round | answers | peak PSS MB | after MB |")
        print("| --- | --- | --- | --- |")
        for round_ in range(1, args.rounds + 1):
            codes, peak = burst(port, body, args.calls, process.pid)
            answers = ", ".join(f"{code}: {count}" for code, count in sorted(
                codes.items(), key=lambda item: str(item[0])))  # 200, 429, OSError's
            print(f"| {round_} | {answers} | {peak:.0f} | {tree_pss_mb(process.pid):.0f} |",
                  flush=True)
    finally:
        stop(process, 30)


if __name__ == "__main__":
    main()
