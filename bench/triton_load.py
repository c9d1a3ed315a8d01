"""One connection, as most users connect: NVIDIA's tritonclient.grpc.aio, closed loop.

One ``InferenceServerClient`` (one gRPC channel, so one TCP connection) carries every call;
``--concurrency`` tasks each send ``ModelInfer`` (raw UINT8 ``images`` [batch,28,28]), wait for
the answer and send the next. The inputs are built once; the answers of the first calls are
checked (``probabilities`` [batch,10]). Prints one JSON object with the keys of
``bench/loadgen.py --json``: req/s, images/s, p50/p90/p99, errors by status code, this client's
CPU and, with ``--server-pid``, the server's (its process tree, from /proc) over the window.

Runs with .venv-triton's python (scripts/triton_client_env.sh): tritonclient's generated
``inference`` messages cannot be imported beside ours, so it never imports the project.

Usage: .venv-triton/bin/python bench/triton_load.py --target 127.0.0.1:PORT [--model mlp]
           [-b 1] [-c 32] [-d 5] [-w 1] [--server-pid PID]
"""

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import time

import numpy as np
import tritonclient.grpc.aio as triton
from proc_cpu import cpu_seconds, process_tree, tree_cpu_seconds
from tritonclient.utils import InferenceServerException

DISTINCT_REQUESTS = 8  # rotated, as bench/loadgen.py does
TIMEOUT_S = 10.0


def loopback(target: str) -> str:
    host, _, port = target.rpartition(":")
    addresses = {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), int(port))}
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"--target {target} is not a loopback address: load stays on this host")
    return target


def inputs(batch: int) -> list[list]:
    rng = np.random.default_rng(0)
    built = []
    for _ in range(DISTINCT_REQUESTS):
        tensor = triton.InferInput("images", [batch, 28, 28], "UINT8")
        tensor.set_data_from_numpy(rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8))
        built.append([tensor])
    return built


async def measure(args) -> dict:
    client = triton.InferenceServerClient(url=args.target)
    requests = inputs(args.batch)
    latencies, errors, window = [], {}, {}
    try:
        for request in requests[:2]:  # the answers are right before anything is timed
            answer = await client.infer(args.model, request, client_timeout=TIMEOUT_S)
            shape = list(answer.as_numpy("probabilities").shape)
            if shape != [args.batch, 10]:
                raise SystemExit(f"unexpected probabilities shape {shape}")
        start = time.time() + args.warmup
        end = start + args.duration

        async def caller(index: int) -> None:
            sent = index
            while (began := time.time()) < end:
                clock = time.perf_counter_ns()
                failure = None
                try:
                    await client.infer(args.model, requests[sent % DISTINCT_REQUESTS],
                                       client_timeout=TIMEOUT_S)
                except InferenceServerException as error:
                    failure = str(error.status())
                elapsed = time.perf_counter_ns() - clock
                sent += 1
                if began >= start and time.time() <= end:
                    if failure is None:
                        latencies.append(elapsed)
                    else:
                        errors[failure] = errors.get(failure, 0) + 1

        async def meter() -> None:
            pids = process_tree(args.server_pid)
            await asyncio.sleep(max(0.0, start - time.time()))
            window["client"], window["server"] = cpu_seconds(), tree_cpu_seconds(pids)
            await asyncio.sleep(max(0.0, end - time.time()))
            window["client"] = cpu_seconds() - window["client"]
            window["server"] = tree_cpu_seconds(pids) - window["server"]

        await asyncio.gather(meter(), *(caller(i) for i in range(args.concurrency)))
    finally:
        await client.close()
    return summary(args, np.array(latencies, dtype=np.int64), errors, window)


def summary(args, latencies: np.ndarray, errors: dict, window: dict) -> dict:
    requests = len(latencies)

    def percentile(q: float) -> float:
        return float(np.percentile(latencies, q)) / 1e6 if requests else float("nan")

    server_cpu = window["server"] if args.server_pid else None
    return {
        "target": args.target, "api": "v2", "model": args.model, "batch": args.batch,
        "concurrency": args.concurrency, "processes": 1, "channels": 1,
        "duration_s": args.duration, "requests": requests, "errors": errors,
        "requests_per_s": requests / args.duration,
        "images_per_s": requests * args.batch / args.duration,
        "p50_ms": percentile(50), "p90_ms": percentile(90), "p99_ms": percentile(99),
        "client_cpu_s": window["client"],
        "client_cpu_ms_per_request": 1e3 * window["client"] / requests if requests else None,
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": (1e3 * server_cpu / requests
                                      if requests and server_cpu is not None else None),
        "loadavg_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, type=loopback, help="HOST:PORT, loopback")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("-b", "--batch", type=int, default=1, help="images per request")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="calls in flight")
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("-w", "--warmup", type=float, default=1.0, help="seconds before it")
    parser.add_argument("--server-pid", type=int, action="append", default=[],
                        help="measure this process's (and its descendants') CPU")
    args = parser.parse_args()
    if not (0 < args.duration <= 300 and 0 <= args.warmup <= 60):
        parser.error("--duration must be in (0, 300], --warmup in [0, 60]")
    if min(args.batch, args.concurrency) < 1:
        parser.error("--batch and --concurrency must be at least 1")
    print(json.dumps(asyncio.run(measure(args))))


if __name__ == "__main__":
    main()
