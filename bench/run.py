"""The whole benchmark in one run on one machine, printed as markdown (BENCHMARKS.md).

1. The limit: onnxruntime in this process on the same model files (no server).
2. This server (default settings: one worker process per core) over the domain API
   (``Classify``: the model *and* the baseline per image) and over the Open Inference Protocol
   (``ModelInfer``: the model only), then MLServer 1.7 and KServe 0.21 (each in its own venv,
   an onnxruntime session on the same ``mlp`` ONNX file, v2 gRPC), one server at a time.
   Each gets the same closed-loop load generator at batch 1 x concurrency 1, 8, 32 and batch
   64 x concurrency 4: by default bench/loadgen.cc (C++, built into .work/bin/loadgen on first
   use, run through bench/native_loadgen.py), which costs the shared cores far less CPU per
   call than ``--loadgen python``, bench/loadgen.py (asyncio, one client process). One
   connection at concurrency 1 (a lone client keeps one), 16 otherwise.
3. Batch-scoring the 10,000 test images: ours with ``fmnist score`` (domain API, stream of
   1000-image batches; one warm-up run per worker first), everyone with bench/score_v2.py
   (v2, 1000-image batches, 2 in flight), and in-process onnxruntime as the limit.
4. For reference, the gRPC floor (bench/grpc_floor.py): a grpc.aio server that answers a
   fixed ``ModelInfer`` response, no model: what gRPC in Python costs by itself.
5. Start-up time to SERVING and RSS (bench/startup.py).
6. Ratios to the limit and to each peer, and the bars of issue 4.

Usage: python bench/run.py [--repository .work/bench-repo] [--duration 5]
                           [--loadgen native|python] [--out FILE]
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import native_loadgen
import numpy as np
import onnxruntime
import score_v2
import startup
from ort_limit import measure

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.client.dataset import load_test_set
from serving.settings import available_cores

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MATRIX = ((1, 1), (1, 8), (1, 32), (64, 4))
PEERS = ("mlserver", "kserve")
OURS_PORT, PEER_PORT, FLOOR_PORT = 18900, 18910, 18950
FLOOR = "gRPC floor (no model)"
SCORE_BATCH = 1000
# Connections per client process: a multi-process server spreads connections, not calls, over
# its workers. With the kernel's SO_REUSEPORT hash (ours before --connection-spread, the
# peers' way) the split varied from run to run (BENCHMARKS.md: up to 40% at batch 1 x 32 with
# 16; 64 evened that out but cost ~30% at batch 64 x 4).
CHANNELS = 16
LOAD_GENERATORS = {
    "native": "bench/loadgen.cc (C++ gRPC callback API, one process, closed loop)",
    "python": "bench/loadgen.py (Python grpc.aio, one process, closed loop)",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def in_process_limits(repository: Path, seconds: float) -> dict:
    """Best of 1 and 2 intra-op threads per batch size, and the 10k scoring time."""
    model = str(repository / "mlp" / "1" / "model.onnx")
    limits = {}
    for batch in (1, 64):
        runs = [(threads, *measure(model, batch, threads, seconds)) for threads in (1, 2)]
        threads, calls, p50_us = max(runs, key=lambda run: run[1])
        limits[batch] = {"images_per_s": calls * batch, "calls_per_s": calls,
                         "p50_ms": p50_us / 1000, "threads": threads}
    images, _ = load_test_set()
    for name, models in (("mlp", ["mlp"]), ("mlp+baseline", ["mlp", "baseline"])):
        best = min(_score_in_process([repository / m / "1" / "model.onnx" for m in models],
                                     images, threads) for threads in (1, 2))
        limits[f"score {name}"] = best
    return limits


def _score_in_process(files: list[Path], images: np.ndarray, threads: int) -> float:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = [onnxruntime.InferenceSession(str(f), options,
                                             providers=["CPUExecutionProvider"]) for f in files]
    for session in sessions:
        session.run(None, {"images": images[:SCORE_BATCH]})
    started = time.perf_counter()
    for start in range(0, len(images), SCORE_BATCH):
        for session in sessions:
            session.run(None, {"images": images[start:start + SCORE_BATCH]})
    return time.perf_counter() - started


def wait_ready(target: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.time() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server for {target} exited ({process.returncode})")
            with contextlib.suppress(grpc.RpcError):
                if stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=2).ready:
                    return
            time.sleep(0.3)
    raise SystemExit(f"{target} not ready after {timeout} s")


@contextlib.contextmanager
def running(command: list[str], target: str, log_file: Path):
    with open(log_file, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_ready(target, process)
        time.sleep(1.0)  # let every worker of a multi-process server finish starting
        yield process
    finally:
        startup.stop(process, 30)


def load(target: str, api: str, point: tuple[int, int], pid: int, args) -> dict:
    batch, concurrency = point
    channels = 1 if concurrency == 1 else CHANNELS  # a lone client keeps one connection
    if args.loadgen == "native":
        return native_loadgen.run(target, api, "mlp", batch, concurrency=concurrency,
                                  warmup_s=args.warmup, duration_s=args.duration,
                                  channels=channels, server_pid=pid)
    command = [PYTHON, str(ROOT / "bench" / "loadgen.py"), "--target", target, "--api", api,
               "-b", str(batch), "-c", str(concurrency), "-d", str(args.duration),
               "-w", str(args.warmup), "--channels", str(channels), "--server-pid", str(pid),
               "--json"]
    answer = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(answer.stdout)


def score_ours(target: str) -> float:
    answer = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "fmnist"), "score", "--target", target, "--model", "mlp",
         "--no-progress"], capture_output=True, text=True, check=True, timeout=300)
    return float(re.search(r"images/s \(([\d.]+) s\)", answer.stdout).group(1))


def score_over_v2(target: str) -> float:
    images, _ = load_test_set()
    seconds, _ = asyncio.run(score_v2.score(target, "mlp", images, SCORE_BATCH, 2))
    return seconds


def measure_servers(args) -> tuple[dict, dict]:
    rows, scores = {}, {}
    work = ROOT / ".work" / "bench-run"
    work.mkdir(parents=True, exist_ok=True)
    target = f"127.0.0.1:{OURS_PORT}"
    command = [PYTHON, "-m", "serving", "--model-repository", str(args.repository), "--host",
               "127.0.0.1", "--port", str(OURS_PORT), "--log-level", "WARNING",
               "--poll-interval", "0"]
    with running(command, target, work / "ours.log") as server:
        for api in ("domain", "v2"):
            for batch, concurrency in MATRIX:
                log(f"ours {api} b{batch} c{concurrency}")
                rows[f"ours {api}", batch, concurrency] = load(
                    target, api, (batch, concurrency), server.pid, args)
        log("ours scoring")
        for _worker in range(available_cores()):  # warm-up: the first 1000-image call of a
            score_ours(target)  # worker allocates; each run's connection goes to the next one
        scores["ours fmnist score (domain)"] = score_ours(target)
        scores["ours v2"] = score_over_v2(target)
    model_file = args.repository / "mlp" / "1" / "model.onnx"
    for offset, peer in enumerate(args.peers):
        port = PEER_PORT + 10 * offset
        target = f"127.0.0.1:{port}"
        command = [str(ROOT / "bench" / "peers" / "serve.sh"), peer, str(model_file), str(port)]
        with running(command, target, work / f"{peer}.log") as server:
            for batch, concurrency in MATRIX:
                log(f"{peer} b{batch} c{concurrency}")
                rows[peer, batch, concurrency] = load(target, "v2", (batch, concurrency),
                                                      server.pid, args)
            log(f"{peer} scoring")
            score_over_v2(target)  # warm-up, as for ours
            scores[f"{peer} v2"] = score_over_v2(target)
    if args.floor:
        target = f"127.0.0.1:{FLOOR_PORT}"
        command = [PYTHON, str(ROOT / "bench" / "grpc_floor.py"), str(FLOOR_PORT)]
        with running(command, target, work / "floor.log") as server:
            for batch, concurrency in MATRIX[:3]:
                log(f"gRPC floor b{batch} c{concurrency}")
                rows[FLOOR, batch, concurrency] = load(target, "v2", (batch, concurrency),
                                                       server.pid, args)
    return rows, scores


def ratio(value: float, reference: float | None) -> str:
    return "-" if not reference else f"{value / reference:.2f}"


def report(limits: dict, rows: dict, scores: dict, starts: list[dict], args) -> str:
    peers = list(args.peers)
    out = [f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, "
           f"load average before/after: {args.load_before:.2f} / {os.getloadavg()[0]:.2f}. "
           f"Load windows {args.duration:g} s after {args.warmup:g} s warm-up.", ""]
    out += ["### In-process onnxruntime (the limit)", "",
            "| batch | best intra-op threads | calls/s | images/s | p50 ms |",
            "| --- | --- | --- | --- | --- |"]
    for batch in (1, 64):
        lim = limits[batch]
        out.append(f"| {batch} | {lim['threads']} | {lim['calls_per_s']:,.0f} "
                   f"| {lim['images_per_s']:,.0f} | {lim['p50_ms']:.3f} |")
    out += ["", "### Servers (same load generator, one server at a time)", "",
            f"Load generator: {LOAD_GENERATORS[args.loadgen]}; 1 connection at concurrency 1, "
            f"{CHANNELS} otherwise. Client CPU is the load generator's own.", "",
            "| server / API | batch | conc | req/s | images/s | p50 ms | p99 ms | errors "
            "| client CPU ms/req | server CPU ms/req | images/s ÷ limit | p50 ÷ limit "
            + "".join(f"| req/s ÷ {p} | p50 ÷ {p} " for p in peers) + "|",
            "| --- " * (12 + 2 * len(peers)) + "|"]
    for (name, batch, concurrency), r in rows.items():
        lim = limits[batch]
        cells = [name, batch, concurrency, f"{r['requests_per_s']:,.0f}",
                 f"{r['images_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                 sum(r["errors"].values()), f"{r['client_cpu_ms_per_request']:.3f}",
                 f"{r['server_cpu_ms_per_request']:.3f}",
                 ratio(r["images_per_s"], lim["images_per_s"]),
                 ratio(r["p50_ms"], lim["p50_ms"])]
        for peer in peers:
            other = rows.get((peer, batch, concurrency))
            cells += [ratio(r["requests_per_s"], other and other["requests_per_s"]),
                      ratio(r["p50_ms"], other and other["p50_ms"])]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    out += ["", "### Batch-scoring the 10,000 test images", "",
            "| who | seconds | images/s | ÷ in-process mlp | ÷ in-process mlp+baseline |",
            "| --- | --- | --- | --- | --- |"]
    for name in ("mlp", "mlp+baseline"):
        seconds = limits[f"score {name}"]
        out.append(f"| in-process onnxruntime, {name} | {seconds:.3f} | {10000 / seconds:,.0f} "
                   f"| {ratio(seconds, limits['score mlp'])} "
                   f"| {ratio(seconds, limits['score mlp+baseline'])} |")
    for name, seconds in scores.items():
        out.append(f"| {name} | {seconds:.3f} | {10000 / seconds:,.0f} "
                   f"| {ratio(seconds, limits['score mlp'])} "
                   f"| {ratio(seconds, limits['score mlp+baseline'])} |")
    out += ["", "### Start-up and memory (bench/startup.py)", "",
            "| workers | start to SERVING, median (max) s | largest process RSS MB "
            "| all processes RSS MB |", "| --- | --- | --- | --- |"]
    for s in starts:
        out.append(f"| {s['workers']} | {s['start_s_median']:.2f} ({s['start_s_max']:.2f}) "
                   f"| {s['largest_process_rss_mb']:.0f} | {s['all_processes_rss_mb']:.0f} |")
    out += ["", "### Bars", "", *bars(limits, rows, scores, starts, peers)]
    return "\n".join(out)


def bars(limits, rows, scores, starts, peers) -> list[str]:
    def verdict(met: bool) -> str:
        return "**met**" if met else "**not met**"

    lines = []
    ours = rows["ours v2", 64, 4]["images_per_s"]
    need = 0.6 * limits[64]["images_per_s"]
    lines.append(f"- batch 64, concurrency 4: {ours:,.0f} images/s (v2) vs 0.6 x "
                 f"{limits[64]['images_per_s']:,.0f} = {need:,.0f}: {verdict(ours >= need)}")
    if peers:
        ours = rows["ours v2", 1, 32]["requests_per_s"]
        best = max(rows[p, 1, 32]["requests_per_s"] for p in peers)
        lines.append(f"- batch 1, concurrency 32: {ours:,.0f} infer/s vs 2 x the faster peer "
                     f"{best:,.0f} = {2 * best:,.0f} ({ours / best:.2f}x): "
                     f"{verdict(ours >= 2 * best)}")
        ours = rows["ours v2", 1, 1]["p50_ms"]
        best = min(rows[p, 1, 1]["p50_ms"] for p in peers)
        lines.append(f"- batch 1, concurrency 1: p50 {ours:.2f} ms vs 0.6 x the better peer "
                     f"{best:.2f} ms = {0.6 * best:.2f} ms ({ours / best:.2f}x): "
                     f"{verdict(ours <= 0.6 * best)}")
    served = scores["ours fmnist score (domain)"]
    lines.append(f"- scoring 10k through the service: {served:.3f} s vs 3 x in-process "
                 f"{limits['score mlp']:.3f} s = {3 * limits['score mlp']:.3f} s "
                 f"({served / limits['score mlp']:.2f}x; mlp+baseline in-process "
                 f"{limits['score mlp+baseline']:.3f} s): "
                 f"{verdict(served <= 3 * limits['score mlp'])}")
    default = starts[-1]
    lines.append(f"- start to SERVING with {default['workers']} worker(s): median "
                 f"{default['start_s_median']:.2f} s: {verdict(default['start_s_median'] < 1)};"
                 f" largest serving process RSS {default['largest_process_rss_mb']:.0f} MB: "
                 f"{verdict(default['largest_process_rss_mb'] < 200)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / ".work" / "bench-repo",
                        help="model repository with softmax, mlp and baseline (fmnist-train)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--limit-seconds", type=float, default=3.0)
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip bench/grpc_floor.py (gRPC alone, fixed answer)")
    parser.add_argument("--loadgen", choices=tuple(LOAD_GENERATORS), default="native",
                        help="native: bench/loadgen.cc (C++, built with g++ on first use); "
                             "python: bench/loadgen.py (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if not (args.repository / "mlp" / "1" / "model.onnx").exists():
        raise SystemExit(f"{args.repository}/mlp/1/model.onnx missing: run "
                         f".venv/bin/fmnist-train --out {args.repository}")
    if args.loadgen == "native":
        native_loadgen.build()  # compile before any server starts, and fail early
    args.load_before = os.getloadavg()[0]
    log("in-process limits")
    limits = in_process_limits(args.repository, args.limit_seconds)
    rows, scores = measure_servers(args)
    log("start-up")
    starts = [startup.measure(str(args.repository), workers, 3)
              for workers in sorted({1, os.cpu_count() or 1})]
    text = report(limits, rows, scores, starts, args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
