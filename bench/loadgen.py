"""Closed-loop gRPC load generator for the Open Inference Protocol and the fashion_mnist API.

Each of ``--processes`` client processes runs an asyncio loop with its share of
``--concurrency`` workers; each worker sends one request, waits for the answer, and sends the
next (closed loop). All processes warm up together, then measure the same window, and the
parent merges what they saw: requests/s, images/s, latency percentiles, errors by status
code, the client processes' own CPU seconds (getrusage) and, with ``--server-pid``, the
server's CPU seconds over the same window (the process and its descendants, from /proc).

Requests are serialized once, before the run, and answers are not decoded during the window
(``--decode`` turns that on), so the client spends as little CPU per request as a Python
client can; the first answer of every worker is decoded and checked. Targets must be
loopback addresses: this tool never sends load anywhere else.

Examples:
  python bench/loadgen.py --target 127.0.0.1:8001 --model mlp -b 1 -c 8 -d 10
  python bench/loadgen.py --target 127.0.0.1:50051 --api domain -b 64 -c 4 -p 2 --json
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np
from loadgen_requests import (
    DISTINCT_REQUESTS,
    DOMAIN_METHOD,
    V2_METHOD,
    Plan,
    build_requests,
    check_answer,
    loopback_target,
)
from proc_cpu import cpu_seconds, process_tree, tree_cpu_seconds

MAX_DURATION_S = 300
MAX_WARMUP_S = 60
START_DELAY_S = 1.5  # time for the spawned processes to import and connect before the start


@dataclass
class ProcessResult:
    """What one client process measured inside the window."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def run_process(plan: Plan) -> ProcessResult:
    """One client process: ``plan.concurrency`` closed-loop workers over ``plan.channels``.

    Each channel is its own TCP connection (a local subchannel pool stops gRPC from sharing
    one), which matters for servers of several processes behind one port (SO_REUSEPORT):
    the kernel spreads connections, not requests, over them.
    """
    result = ProcessResult()
    requests = build_requests(plan)
    method = V2_METHOD if plan.api == "v2" else DOMAIN_METHOD
    window_start = plan.start_at + plan.warmup_s
    window_end = window_start + plan.duration_s
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
               ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(plan.target, options=options)
                for _ in range(plan.channels)]
    # bytes in, bytes out: no (de)serializing per call
    calls = [channel.unary_unary(method) for channel in channels]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))

        async def worker(index: int) -> None:
            # with concurrency > 1 each worker rotates over all connections, so that every
            # connection (and every worker process behind them) carries the same share of the
            # calls; a lone closed-loop client keeps to one connection, as real ones do
            check_answer(plan, await calls[index % len(calls)](
                requests[index % DISTINCT_REQUESTS], timeout=plan.timeout_s))
            await sleep_until(plan.start_at)
            sent = index
            while (started := time.time()) < window_end:
                begin = time.perf_counter_ns()
                try:
                    call = calls[sent % len(calls)] if plan.concurrency > 1 else calls[0]
                    answer = await call(requests[sent % DISTINCT_REQUESTS], timeout=plan.timeout_s)
                    if plan.decode:
                        check_answer(plan, answer)
                    failure = None
                except grpc.aio.AioRpcError as error:
                    failure = error.code().name
                elapsed = time.perf_counter_ns() - begin
                sent += 1
                if started >= window_start and time.time() <= window_end:
                    if failure is None:
                        result.latencies_ns.append(elapsed)
                    else:
                        result.errors[failure] = result.errors.get(failure, 0) + 1

        async def cpu_meter() -> None:
            await sleep_until(window_start)
            before = cpu_seconds()
            await sleep_until(window_end)
            result.cpu_s = cpu_seconds() - before

        await asyncio.gather(cpu_meter(), *(worker(i) for i in range(plan.concurrency)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return result


def process_main(plan: Plan) -> ProcessResult:
    return asyncio.run(run_process(plan))


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(plan: Plan, processes: int, server_pids: list[int]) -> dict:
    """Runs the client processes, samples the server's CPU over the window, merges results."""
    shares = [share for share in split(plan.concurrency, processes) if share > 0]
    plan.start_at = time.time() + START_DELAY_S + 0.5 * len(shares)
    plans = [Plan(**{**asdict(plan), "concurrency": share, "seed": plan.seed + i})
             for i, share in enumerate(shares)]
    context = multiprocessing.get_context("spawn")  # no inherited gRPC state in the children
    with context.Pool(len(plans)) as pool:
        pending = pool.map_async(process_main, plans)
        server_cpu = None
        if server_pids:
            pids = process_tree(server_pids)
            time.sleep(max(0.0, plan.start_at + plan.warmup_s - time.time()))
            before = tree_cpu_seconds(pids)
            time.sleep(max(0.0, plan.start_at + plan.warmup_s + plan.duration_s - time.time()))
            server_cpu = tree_cpu_seconds(pids) - before
        results = pending.get(timeout=plan.warmup_s + plan.duration_s + 60 + plan.timeout_s)
    latencies = np.array([ns for r in results for ns in r.latencies_ns], dtype=np.int64)
    errors: dict[str, int] = {}
    for r in results:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    requests = len(latencies)
    client_cpu = sum(r.cpu_s for r in results)
    percentile = (lambda q: float(np.percentile(latencies, q)) / 1e6) if requests else (
        lambda q: float("nan"))
    return {
        "target": plan.target, "api": plan.api, "model": plan.model, "batch": plan.batch,
        "concurrency": plan.concurrency, "processes": len(plans), "channels": plan.channels,
        "duration_s": plan.duration_s, "requests": requests, "errors": errors,
        "requests_per_s": requests / plan.duration_s,
        "images_per_s": requests * plan.batch / plan.duration_s,
        "p50_ms": percentile(50), "p90_ms": percentile(90), "p99_ms": percentile(99),
        "client_cpu_s": client_cpu,
        "client_cpu_ms_per_request": 1e3 * client_cpu / requests if requests else None,
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": (1e3 * server_cpu / requests
                                      if requests and server_cpu is not None else None),
        "loadavg_1m": os.getloadavg()[0],
    }


MARKDOWN_HEADER = ("| label | batch | conc | procs | req/s | images/s | p50 ms | p99 ms | errors "
                   "| client CPU s (ms/req) | server CPU s (ms/req) | load 1m |\n"
                   "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def markdown_row(label: str, r: dict) -> str:
    def cpu(total, per_request):
        return "-" if total is None else f"{total:.2f} ({per_request or float('nan'):.3f})"

    errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
    return (f"| {label} | {r['batch']} | {r['concurrency']} | {r['processes']} "
            f"| {r['requests_per_s']:,.0f} | {r['images_per_s']:,.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {errors} "
            f"| {cpu(r['client_cpu_s'], r['client_cpu_ms_per_request'])} "
            f"| {cpu(r['server_cpu_s'], r['server_cpu_ms_per_request'])} "
            f"| {r['loadavg_1m']:.2f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Prints one markdown table row (with --header, the header first) or JSON.")
    parser.add_argument("--target", required=True, type=loopback_target,
                        help="HOST:PORT of the server; loopback addresses only")
    parser.add_argument("--api", choices=("v2", "domain"), default="v2",
                        help="v2: Open Inference Protocol ModelInfer with raw UINT8 input; "
                             "domain: fashion_mnist.v1 Classifier/Classify (default: %(default)s)")
    parser.add_argument("--model", default="mlp", help="model name (default: %(default)s)")
    parser.add_argument("-b", "--batch", type=int, default=1, help="images per request")
    parser.add_argument("-c", "--concurrency", type=int, default=1,
                        help="requests in flight in total, split over the processes")
    parser.add_argument("-d", "--duration", type=float, default=10.0,
                        help=f"measured window in seconds (at most {MAX_DURATION_S})")
    parser.add_argument("-w", "--warmup", type=float, default=2.0,
                        help=f"unmeasured seconds before the window (at most {MAX_WARMUP_S})")
    parser.add_argument("-p", "--processes", type=int, default=1, help="client processes")
    parser.add_argument("--channels", type=int, default=1,
                        help="connections per process (use >1 against multi-process servers)")
    parser.add_argument("--decode", action="store_true",
                        help="decode and check every answer (costs client CPU)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request deadline (s)")
    parser.add_argument("--server-pid", type=int, action="append", default=[],
                        help="measure this process's (and its descendants') CPU over the window")
    parser.add_argument("--label", default="", help="first column of the markdown row")
    parser.add_argument("--header", action="store_true", help="print the markdown header too")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S or not 0 <= args.warmup <= MAX_WARMUP_S:
        parser.error(f"--duration must be in (0, {MAX_DURATION_S}], "
                     f"--warmup in [0, {MAX_WARMUP_S}]")
    if min(args.batch, args.concurrency, args.processes, args.channels) < 1:
        parser.error("--batch, --concurrency, --processes and --channels must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = Plan(target=args.target, api=args.api, model=args.model, batch=args.batch,
                concurrency=args.concurrency, warmup_s=args.warmup, duration_s=args.duration,
                decode=args.decode, timeout_s=args.timeout, seed=args.seed,
                channels=args.channels)
    try:
        result = run(plan, args.processes, args.server_pid)
    except grpc.RpcError as error:
        sys.exit(f"loadgen: first answer failed: {error.code().name}: {error.details()}")
    except ValueError as error:
        sys.exit(f"loadgen: first answer is wrong: {error}")
    if args.json:
        print(json.dumps(result))
        return
    if args.header:
        print(MARKDOWN_HEADER)
    print(markdown_row(args.label or f"{args.api} {args.target}", result))


if __name__ == "__main__":
    main()
