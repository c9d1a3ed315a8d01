"""The in-process ceiling: how fast onnxruntime alone runs the model, with no server around it.

Calls ``session.run`` back to back on random uint8 images for each batch size and intra-op
thread count, and prints calls/s, images/s and the median call time as a markdown table.
Every server's figures should be read against this row.

Usage: python bench/ort_limit.py MODEL.onnx [--batches 1 64] [--threads 1 2] [--seconds 5]
"""

import argparse
import os
import time

import numpy as np
import onnxruntime


def measure(model: str, batch: int, threads: int, seconds: float) -> tuple[float, float]:
    """Returns (calls per second, median call time in microseconds)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    feed = {session.get_inputs()[0].name: images}
    for _ in range(20):
        session.run(None, feed)
    durations = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        session.run(None, feed)
        durations.append(time.perf_counter() - start)
    return len(durations) / sum(durations), 1e6 * float(np.median(durations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX file taking uint8 images [N,28,28]")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=5.0, help="per configuration (max 60)")
    args = parser.parse_args()
    if not os.path.isfile(args.model):  # onnxruntime's traceback said it five lines deep
        parser.error(f"{args.model}: no such file")
    seconds = min(args.seconds, 60.0)
    print("| batch | intra-op threads | calls/s | images/s | p50 us | load 1m |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch in args.batches:
        for threads in args.threads:
            calls, median_us = measure(args.model, batch, threads, seconds)
            print(f"| {batch} | {threads} | {calls:,.0f} | {calls * batch:,.0f} "
                  f"| {median_us:.0f} | {os.getloadavg()[0]:.2f} |")


if __name__ == "__main__":
    main()
