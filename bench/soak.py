"""Soak test: many concurrent clients for a bounded time; counts errors and the server's memory.

Starts ``fmnist-serve`` on a free loopback port (or uses ``--target`` with ``--server-pid``),
runs ``--clients`` closed-loop clients (half on fashion_mnist.v1 Classify, half on the Open
Inference Protocol ModelInfer) for ``--warmup`` + ``--duration`` seconds, checks every answer,
and samples the resident memory (RSS) of the server and its worker processes every second.
Prints one markdown table; exits 1 if any call failed or RSS grew by 10% or more between the
end of the warm-up and the end of the run.

    python bench/soak.py --model-repository model_repository --clients 64 --duration 60
"""

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from loadgen_requests import loopback_target
from proc_cpu import process_tree
from startup import free_port, health_serving, rss_mb, stop, wait_until_ready

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as pb_v2
from inference import grpc_service_pb2_grpc as pb_v2_grpc

MAX_RSS_GROWTH = 0.10
CHANNELS = 8


@dataclass
class SoakResult:
    clients: int
    warmup_s: float
    duration_s: float
    batch: int
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    rss_mb: list[float] = field(default_factory=list, repr=False)  # one sample per second
    rss_after_warmup_mb: float = 0.0

    @property
    def rss_growth(self) -> float:
        return self.rss_mb[-1] / self.rss_after_warmup_mb - 1 if self.rss_after_warmup_mb else 0

    @property
    def passed(self) -> bool:
        return not self.errors and self.rss_growth < MAX_RSS_GROWTH

    def summary(self) -> dict:
        latencies = np.array(self.latencies_ms or [0.0])
        return {
            "clients": self.clients, "warmup_s": self.warmup_s, "duration_s": self.duration_s,
            "batch": self.batch, "calls": self.calls, "errors": sum(self.errors.values()),
            "errors_by_code": self.errors,
            "calls_per_s": round(self.calls / self.duration_s, 1),
            "images_per_s": round(self.calls * self.batch / self.duration_s, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "rss_after_warmup_mb": round(self.rss_after_warmup_mb, 1),
            "rss_end_mb": round(self.rss_mb[-1], 1) if self.rss_mb else 0.0,
            "rss_max_mb": round(max(self.rss_mb), 1) if self.rss_mb else 0.0,
            "rss_growth_pct": round(100 * self.rss_growth, 2),
            "passed": self.passed,
        }


@contextlib.contextmanager
def started_server(repository: Path, workers: int):
    """``python -m serving`` on free loopback ports; yields (target, process). HTTP stays on, as
    by default, but not on the default 8080, which a `./run serve` may hold."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", str(repository),
         "--host", "127.0.0.1", "--port", str(port), "--http-port", str(free_port()),
         "--workers", str(workers),
         "--poll-interval", "0", "--log-level", "WARNING"],
    )
    try:
        yield f"127.0.0.1:{port}", process
    finally:
        stop(process, 60)


def requests_for(batch: int):
    images = np.random.default_rng(0).integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    domain = pb.ClassifyRequest(images=[image.tobytes() for image in images])
    v2 = pb_v2.ModelInferRequest(model_name="mlp", raw_input_contents=[images.tobytes()])
    v2.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    return domain, v2


async def soak(target: str, server_pid: int, *, clients: int, warmup: float, duration: float,
               batch: int) -> SoakResult:
    result = SoakResult(clients, warmup, duration, batch)
    domain_request, v2_request = requests_for(batch)
    started = time.monotonic()
    measure_from, stop_at = started + warmup, started + warmup + duration
    errors: Counter = Counter()
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]

    async def client(index: int) -> None:
        channel = channels[index % CHANNELS]
        if index % 2:
            call = pb_v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            request, answered = v2_request, lambda r: r.outputs[0].shape[0] == batch
        else:
            call = pb_grpc.ClassifierStub(channel).Classify
            request, answered = domain_request, lambda r: len(r.results) == batch
        while (now := time.monotonic()) < stop_at:
            try:
                response = await call(request, timeout=30)
                if not answered(response):
                    raise ValueError("wrong number of answers")
                code = None
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            except ValueError:
                code = "WRONG_ANSWER"
            if now >= measure_from:
                result.calls += 1
                result.latencies_ms.append((time.monotonic() - now) * 1000)
                if code:
                    errors[code] += 1

    async def sample_memory() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(1)
            rss = sum(map(rss_mb, process_tree([server_pid])))
            if time.monotonic() >= measure_from:
                result.rss_after_warmup_mb = result.rss_after_warmup_mb or rss
                result.rss_mb.append(rss)

    try:
        await asyncio.gather(sample_memory(), *(client(i) for i in range(clients)))
    finally:
        for channel in channels:
            await channel.close()
    result.errors = dict(errors)
    return result


def markdown(summary: dict) -> str:
    columns = ["clients", "duration_s", "calls", "errors", "calls_per_s", "images_per_s",
               "p50_ms", "p99_ms", "rss_after_warmup_mb", "rss_end_mb", "rss_max_mb",
               "rss_growth_pct", "passed"]
    return "\n".join([
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        "| " + " | ".join(str(summary[c]) for c in columns) + " |",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--target", help="an already running server (loopback only)")
    parser.add_argument("--server-pid", type=int, help="its pid, for the memory samples")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server processes, when this script starts the server")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds, not measured")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.duration > 600 or args.clients > 512:
        parser.error("bounded runs only: --duration <= 600, --clients <= 512")

    def run(target: str, pid: int, process: subprocess.Popen | None = None) -> SoakResult:
        with grpc.insecure_channel(target) as channel:
            wait_until_ready(process, health_serving(channel), 60, 0.2)
        return asyncio.run(soak(target, pid, clients=args.clients, warmup=args.warmup,
                                duration=args.duration, batch=args.batch))

    if args.target:
        if not args.server_pid:
            parser.error("--target needs --server-pid (to sample its memory)")
        result = run(loopback_target(args.target), args.server_pid)
    else:
        with started_server(args.model_repository, args.workers) as (target, process):
            result = run(target, process.pid, process)
    summary = result.summary()
    print(json.dumps(summary) if args.json else markdown(summary))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
