"""What bursts of large calls cost in memory, over gRPC and HTTP: the peak a container's memory
limit has to cover, and what the server keeps once they are over.

Starts ``python -m serving`` (127.0.0.1, free ports, ``--workers`` and ``--max-request-images``
as given, the latter else raised to ``--images`` where needed, the environment of this process
plus ``--env`` assignments, e.g. ``MALLOC_ARENA_MAX=2``); then, for each of ``--transports``,
sends ``--calls`` requests of ``--images`` images at once, one connection each, ``--rounds``
times: ``grpc`` fashion_mnist.v1 Classify (one bytes per image), ``http-binary`` an Open
Inference Protocol request whose tensor is binary (Triton's extension, as tritonclient sends
it), ``http-json`` the same in JSON. Samples the PSS of every server process every 50 ms, and
waits ``--idle`` seconds after the last burst. Prints a table: the answers, the peak PSS of
each burst, the RSS and PSS of the server's processes after it, and after the idle time.

Usage: python bench/memory.py REPOSITORY [--transports grpc http-binary http-json]
       [--calls 64] [--images 1024] [--rounds 2] [--idle 10] [--workers 2]
       [--max-request-images N] [--env K=V ...]
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

import grpc
from proc_cpu import process_tree
from startup import free_port, health_serving, pss_mb, rss_mb, stop, wait_until_ready

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc

MODEL = "mlp"
TRANSPORTS = ("grpc", "http-binary", "http-json")


def held_mb(pid: int) -> tuple[float, float]:
    """RSS and PSS of the server ``pid`` and its workers."""
    processes = process_tree([pid])
    return sum(map(rss_mb, processes)), sum(map(pss_mb, processes))


def http_bodies(images: int, pixels: bytes) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The Open Inference Protocol request of ``images`` images, binary and JSON."""
    tensor = {"name": "images", "datatype": "UINT8", "shape": [images, 28, 28]}
    header = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": len(pixels)}}]
                         }).encode()
    return {
        "http-binary": (header + pixels, {"Content-Type": "application/octet-stream",
                                          "Inference-Header-Content-Length": str(len(header))}),
        "http-json": (json.dumps({"inputs": [tensor | {"data": list(pixels)}]}).encode(),
                      {"Content-Type": "application/json"}),
    }


def grpc_call(port: int, request: pb.ClassifyRequest):
    def call() -> str:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1)]) as channel:
            try:
                pb_grpc.ClassifierStub(channel).Classify(request, timeout=300)
                return "OK"
            except grpc.RpcError as error:
                return error.code().name
    return call


def http_call(port: int, body: bytes, headers: dict[str, str]):
    def call() -> str:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            connection.request("POST", f"/v2/models/{MODEL}/infer", body, headers)
            response = connection.getresponse()
            response.read()
            return str(response.status)
        except OSError as error:
            return type(error).__name__
        finally:
            connection.close()
    return call


def burst(call, calls: int, pid: int) -> tuple[collections.Counter, float]:
    """``calls`` calls at once; their outcomes and the peak PSS meanwhile."""
    codes, peak, done = collections.Counter(), [held_mb(pid)[1]], threading.Event()
    counting = threading.Lock()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], held_mb(pid)[1])
            time.sleep(0.05)

    def one():
        outcome = call()
        with counting:
            codes[outcome] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=one) for _ in range(calls)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    done.set()
    sampler.join()
    return codes, max(peak[0], held_mb(pid)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository")
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=TRANSPORTS)
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024, help="per request")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds after the last burst")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-request-images", type=int,
                        help="the server's (default: 1024, or --images if more): below "
                        "--images, every call is refused")
    parser.add_argument("--env", nargs="*", default=[], metavar="K=V")
    args = parser.parse_args()
    pixels = bytes(pixel % 256 for pixel in range(args.images * 784))
    bodies = http_bodies(args.images, pixels)
    largest = max(len(body) for body, _ in bodies.values()) + 4096
    grpc_port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", args.repository, "--host",
         "127.0.0.1", "--port", str(grpc_port), "--http-port", str(http_port), "--workers",
         str(args.workers), "--max-request-images",
         str(args.max_request_images or max(args.images, 1024)),
         "--max-message-bytes", str(max(largest, 4 << 20)), "--poll-interval", "0",
         "--log-level", "WARNING"],
        env=os.environ | dict(item.split("=", 1) for item in args.env))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            wait_until_ready(process, health_serving(channel), 30)
        time.sleep(1.0)  # every worker loaded
        calls = {"grpc": grpc_call(grpc_port, pb.ClassifyRequest(
            images=[pixels[start:start + 784] for start in range(0, len(pixels), 784)],
            model=MODEL))} | {name: http_call(http_port, *body) for name, body in bodies.items()}
        rss, pss = held_mb(process.pid)
        print(f"{args.calls} calls of {args.images} images at once, --workers {args.workers}, "
              f"env {' '.join(args.env) or '-'}; started: {rss:.0f} MB RSS, {pss:.0f} MB PSS\n")
        print("| transport | round | answers | peak PSS MB | RSS after MB | PSS after MB |")
        print("| --- | --- | --- | --- | --- | --- |")
        for transport in args.transports:
            for round_ in range(1, args.rounds + 1):
                codes, peak = burst(calls[transport], args.calls, process.pid)
                answers = ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))
                rss, pss = held_mb(process.pid)
                print(f"| {transport} | {round_} | {answers} | {peak:.0f} | {rss:.0f} | "
                      f"{pss:.0f} |", flush=True)
        time.sleep(args.idle)
        rss, pss = held_mb(process.pid)
        print(f"| idle {args.idle:g} s | | | | {rss:.0f} | {pss:.0f} |")
    finally:
        stop(process, 30)


if __name__ == "__main__":
    main()
