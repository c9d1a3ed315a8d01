"""What a rollout costs the clients of two replicas: calls that fail while one of them stops.

Starts two servers (``python -m serving``, default flags, 127.0.0.1, free ports), points one
tritonclient channel at both (``round_robin``), runs ``--threads`` closed loops of ``ModelInfer``
(8 images) and sends SIGTERM to one server ``--before`` seconds in; counts every call's outcome
until ``--seconds``. Rounds alternate a client without and with the retry policy of
``serving.client.api.RETRY_REFUSED_CALLS`` (README, "Open Inference Protocol"); prints a table.

Usage: python bench/drain.py REPOSITORY [--rounds 2] [--threads 8]
"""

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as triton
from startup import free_port, stop, wait_until_ready

from serving.client.api import RETRY_REFUSED_CALLS

RETRY = json.loads(RETRY_REFUSED_CALLS)  # the client's, for the Open Inference Protocol
RETRY["methodConfig"][0]["name"] = [{"service": "inference.GRPCInferenceService"}]
RETRY = json.dumps(RETRY)
MESSAGE_BYTES = 64 << 20


def start_server(repository: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", repository, "--host",
         "127.0.0.1", "--port", str(port), "--http-port", "0", "--poll-interval", "0",
         "--log-level", "ERROR"], stdout=subprocess.DEVNULL)  # its errors, as why it failed
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")

    def ready() -> bool:
        try:
            return client.is_server_ready()
        except triton.InferenceServerException:
            return False

    wait_until_ready(process, ready, 30)
    return process, port


def one_round(repository: str, retry: bool, threads: int, before: float,
              seconds: float) -> collections.Counter:
    stopping, port_a = start_server(repository)
    try:
        other, port_b = start_server(repository)
    except SystemExit:  # the first one too, or it serves on after this script
        stop(stopping, 30)
        raise
    options = [("grpc.lb_policy_name", "round_robin"),
               ("grpc.max_send_message_length", MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MESSAGE_BYTES)]
    if retry:
        options += [("grpc.service_config", RETRY),
                    ("grpc.per_rpc_retry_buffer_size", MESSAGE_BYTES)]
    client = triton.InferenceServerClient(f"ipv4:127.0.0.1:{port_a},127.0.0.1:{port_b}",
                                          channel_args=options)
    images = triton.InferInput("images", [8, 28, 28], "UINT8")
    images.set_data_from_numpy(np.zeros((8, 28, 28), np.uint8))
    outcomes, end = collections.Counter(), time.monotonic() + seconds
    counting = threading.Lock()

    def loop():
        while time.monotonic() < end:
            try:
                client.infer("mlp", [images], client_timeout=10)
                outcome = "OK"
            except triton.InferenceServerException as error:
                outcome = str(error.status()).removeprefix("StatusCode.")
            with counting:
                outcomes[outcome] += 1

    try:
        loops = [threading.Thread(target=loop) for _ in range(threads)]
        for thread in loops:
            thread.start()
        time.sleep(before)
        os.kill(stopping.pid, signal.SIGTERM)
        for thread in loops:
            thread.join()
    finally:
        client.close()
        stop(stopping, 30)
        stop(other, 30)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository")
    parser.add_argument("--rounds", type=int, default=2, help="of each client (alternating)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--before", type=float, default=2.0, help="seconds before SIGTERM")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load a round")
    args = parser.parse_args()
    print("| client | calls | OK | UNAVAILABLE | CANCELLED | other |")
    print("| --- | --- | --- | --- | --- | --- |")
    for _ in range(args.rounds):
        for retry in (False, True):
            outcomes = one_round(args.repository, retry, args.threads, args.before,
                                 args.seconds)
            other = sum(outcomes.values()) - sum(outcomes[code] for code in
                                                 ("OK", "UNAVAILABLE", "CANCELLED"))
            print(f"| {'retry policy' if retry else 'no retry policy'} | "
                  f"{sum(outcomes.values()):,} | {outcomes['OK']:,} | "
                  f"{outcomes['UNAVAILABLE']:,} | {outcomes['CANCELLED']:,} | {other:,} |",
                  flush=True)


if __name__ == "__main__":
    main()
