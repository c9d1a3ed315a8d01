"""The whole benchmark in one run on one machine, printed as markdown (BENCHMARKS.md).

1. The limit: onnxruntime in this process on the same model files (no server).
2. This server (its default flags, plus ``--server-flags``; the code of ``--ours-root``), then
   MLServer 1.7.1 and KServe 0.21 (each in its own venv, an onnxruntime session on the same
   ``mlp`` ONNX file, v2 gRPC, their best settings), one server at a time, each under two
   client shapes at the bar points (batch 1 x concurrency 1 and 32, batch 64 x 4):
   - **one connection**: bench/triton_load.py, NVIDIA's tritonclient.grpc.aio with one
     ``InferenceServerClient`` (one channel), as most users connect; run by .venv-triton's
     python (tritonclient's ``inference`` messages cannot be imported beside ours);
   - **many connections**: bench/loadgen.cc (C++, built into .work/bin/loadgen on first use,
     run through bench/native_loadgen.py), 16 connections the callers rotate over, one for a
     lone caller; for ours also over the domain API (``Classify``: model *and* baseline).
3. Batch-scoring the 10,000 test images: ours with ``fmnist score`` (domain API: mlp and
   baseline, stream of 1000-image batches; one warm-up run per core first), everyone with
   bench/score_v2.py (v2, 1000-image batches, 2 in flight), in-process onnxruntime as the limit.
4. For reference, the gRPC floor (bench/grpc_floor.py): a grpcio synchronous server that
   answers a fixed ``ModelInfer`` response, no model: what gRPC in Python costs by itself.
5. Start-up time to SERVING and RSS (bench/startup.py) with the flags of 2.
6. The bars of issue 12 (bench/run_report.py).

``--only-ours`` measures only this server at the bar points (no peers, limits, domain API or
floor): quick A/B pairs (bench/ab.py). ``--json FILE`` keeps every figure for such scripts.

Usage: python bench/run.py [--repository .work/bench-repo] [--duration 5] [--warmup 1]
           [--ours-root DIR] [--server-flags "--workers 1"] [--only-ours] [--out F] [--json F]
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import grpc
import native_loadgen
import numpy as np
import onnxruntime
import run_report
import score_v2
import startup
from ort_limit import measure

from common.dataset import load_test_set
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"  # scripts/triton_client_env.sh
POINTS = ((1, 1), (1, 32), (64, 4))  # the bar points: (batch, concurrency)
PEERS = ("mlserver", "kserve")
OURS_PORT, PEER_PORT, FLOOR_PORT = 18900, 18910, 18950
SCORE_BATCH = 1000
TEST_IMAGES = 10_000
# Connections of the many-connection shape: a multi-process server spreads connections, not
# calls, over its workers; with fewer the kernel's SO_REUSEPORT hash splits them unevenly.
CHANNELS = 16
ONE, MANY = run_report.ONE, run_report.MANY


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
    """Until ``mlp`` is ready at ``target`` (ours or a peer: v2 ModelReady)."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def ready() -> bool:
            try:
                return stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=2).ready
            except grpc.RpcError:
                return False

        startup.wait_until_ready(process, ready, timeout, 0.3)


@contextlib.contextmanager
def running(command: list[str], target: str, log_file: Path, cwd: Path = ROOT):
    with open(log_file, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        wait_ready(target, process)
        time.sleep(1.0)  # let every worker of a multi-process server finish starting
        yield process
    finally:
        startup.stop(process, 30)


def load(shape: str, target: str, point: tuple[int, int], *, api: str, pid: int, args) -> dict:
    batch, concurrency = point
    if shape == MANY:
        return native_loadgen.run(target, api, "mlp", batch, concurrency=concurrency,
                                  warmup_s=args.warmup, duration_s=args.duration,
                                  channels=1 if concurrency == 1 else CHANNELS, server_pid=pid)
    command = [str(TRITON_PYTHON), str(ROOT / "bench" / "triton_load.py"), "--target", target,
               "-b", str(batch), "-c", str(concurrency), "-d", str(args.duration),
               "-w", str(args.warmup), "--server-pid", str(pid)]
    answer = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if answer.returncode:
        raise SystemExit(f"bench/triton_load.py failed against {target}:\n{answer.stderr}")
    return json.loads(answer.stdout)


def measure_points(rows: dict, name: str, target: str, *, pid: int, args, shapes=(ONE, MANY),
                   api: str = "v2", points=POINTS) -> None:
    for shape in shapes:
        for batch, concurrency in points:
            log(f"{name} {shape} b{batch} c{concurrency}")
            rows[name, shape, batch, concurrency] = load(shape, target, (batch, concurrency),
                                                         api=api, pid=pid, args=args)


def score_ours(target: str, fmnist: Path) -> float:
    """Seconds of ``fmnist score`` on the 10k test set, from the images/s it prints (its
    seconds have only two decimals: 10 ms at ~80 ms)."""
    answer = subprocess.run(
        [str(fmnist), "score", "--target", target, "--model", "mlp", "--no-progress"],
        capture_output=True, text=True, check=True, timeout=300)
    return TEST_IMAGES / float(re.search(r"([\d.]+) images/s \(", answer.stdout).group(1))


def score_over_v2(target: str) -> float:
    images, _ = load_test_set()
    seconds, _ = asyncio.run(score_v2.score(target, "mlp", images, SCORE_BATCH, 2))
    return seconds


def ours_command(args, port: int) -> list[str]:
    return [str(args.ours_python), "-m", "serving", "--model-repository", str(args.repository),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING",
            "--poll-interval", "0", "--http-port", str(startup.free_port()),  # 8080 may be taken
            *args.server_flags]


def measure_servers(args) -> tuple[dict, dict]:
    rows, scores = {}, {}
    work = ROOT / ".work" / "bench-run"
    work.mkdir(parents=True, exist_ok=True)
    target = f"127.0.0.1:{OURS_PORT}"
    with running(ours_command(args, OURS_PORT), target, work / "ours.log",
                 args.ours_root) as server:
        measure_points(rows, "ours v2", target, pid=server.pid, args=args)
        if not args.only_ours:
            measure_points(rows, "ours domain", target, pid=server.pid, args=args,
                           shapes=(MANY,), api="domain")
        log("ours scoring")
        fmnist = args.ours_root / ".venv" / "bin" / "fmnist"
        for _worker in range(os.cpu_count() or 1):  # warm-up: the first 1000-image call of a
            score_ours(target, fmnist)  # worker allocates; each run may reach another worker
        scores["ours fmnist score (domain: mlp+baseline)"] = score_ours(target, fmnist)
        scores["ours v2 (mlp)"] = score_over_v2(target)
    model_file = args.repository / "mlp" / "1" / "model.onnx"
    for offset, peer in enumerate(args.peers):
        port = PEER_PORT + 10 * offset
        target = f"127.0.0.1:{port}"
        command = [str(ROOT / "bench" / "peers" / "serve.sh"), peer, str(model_file), str(port)]
        with running(command, target, work / f"{peer}.log") as server:
            measure_points(rows, peer, target, pid=server.pid, args=args)
            log(f"{peer} scoring")
            score_over_v2(target)  # warm-up, as for ours
            scores[f"{peer} v2 (mlp)"] = score_over_v2(target)
    if args.floor:
        target = f"127.0.0.1:{FLOOR_PORT}"
        command = [PYTHON, str(ROOT / "bench" / "grpc_floor.py"), str(FLOOR_PORT)]
        with running(command, target, work / "floor.log") as server:
            measure_points(rows, run_report.FLOOR, target, pid=server.pid, args=args,
                           shapes=(MANY,), points=POINTS[:2])
    return rows, scores


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / ".work" / "bench-repo",
                        help="model repository with softmax, mlp and baseline (fmnist-train)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--limit-seconds", type=float, default=3.0)
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip bench/grpc_floor.py (gRPC alone, fixed answer)")
    parser.add_argument("--ours-root", type=Path, default=ROOT,
                        help="checkout whose server is measured, with its own .venv (e.g. a "
                             "worktree of older code); the harness stays this one")
    parser.add_argument("--server-flags", type=shlex.split, default=[],
                        help='flags added to our server\'s, e.g. "--workers 1"')
    parser.add_argument("--only-ours", action="store_true",
                        help="only our server at the bar points, its scoring and start-up: "
                             "no peers, in-process limits, domain API or floor")
    parser.add_argument("--label", default="", help="named in the report's first line")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--json", type=Path, help="also write every figure here as JSON")
    args = parser.parse_args()
    args.ours_root = args.ours_root.resolve()
    args.repository = args.repository.resolve()
    args.ours_python = args.ours_root / ".venv" / "bin" / "python"
    if args.only_ours:
        args.peers, args.floor = [], False
    for needed, hint in ((args.repository / "mlp" / "1" / "model.onnx",
                          f".venv/bin/fmnist-train --out {args.repository}"),
                         (args.ours_python, f"set up {args.ours_root} (./run test --co -q)"),
                         (TRITON_PYTHON, "scripts/triton_client_env.sh")):
        if not needed.exists():
            raise SystemExit(f"{needed} missing: {hint} (bench/run.sh does it)")
    return args


def main() -> None:
    args = parse_args()
    native_loadgen.build()  # compile before any server starts, and fail early
    # pip compiles an installed server's bytecode (the image's); a checkout whose environment
    # sets PYTHONDONTWRITEBYTECODE (this machine's does) would compile it at every start
    subprocess.run([args.ours_python, "-m", "compileall", "-q", "serving", "common", "protos"],
                   cwd=args.ours_root, check=True, stdout=subprocess.DEVNULL)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    args.uptime = uptime.stdout.strip()
    args.load_before = os.getloadavg()[0]
    args.started = time.strftime("%Y-%m-%d %H:%M")
    limits = {}
    if not args.only_ours:
        log("in-process limits")
        limits = in_process_limits(args.repository, args.limit_seconds)
    rows, scores = measure_servers(args)
    log("start-up")
    starts = [startup.measure(str(args.repository), 0, 3, python=str(args.ours_python),
                              flags=args.server_flags, cwd=str(args.ours_root))]
    args.load_after = os.getloadavg()[0]
    text = run_report.report(limits, rows, scores, starts, args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(run_report.figures(limits, rows, scores, starts, args),
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
