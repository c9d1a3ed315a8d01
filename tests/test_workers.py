"""Several worker processes behind one port: connections spread over them, metrics and
statistics sum over them, a killed worker is replaced, SIGTERM stops them all and cleans up.
Starting and sizing workers is tests/test_workers_start_up.py's."""

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_metrics import scrape as scrape_metrics
from test_metrics import value

from fashion_mnist.v1 import classifier_pb2 as classifier_pb
from fashion_mnist.v1 import classifier_pb2_grpc as classifier_pb_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import held_port
from tests.server_process import children, server_process

IMAGES = np.zeros((2, 28, 28), dtype=np.uint8)
REQUEST = pb.ModelInferRequest(
    model_name="mlp", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=IMAGES.shape)],
    raw_input_contents=[IMAGES.tobytes()])
OK_CALLS = {"api": "v2", "method": "ModelInfer", "model": "mlp", "code": "OK"}
METADATA_CALLS = {"api": "v2", "method": "ServerMetadata", "model": "", "code": "OK"}


@contextlib.contextmanager
def running_workers(model_repository, *flags: str):
    metrics_port = held_port()
    with server_process(model_repository, "--workers", "2", "--metrics-port", str(metrics_port),
                        "--poll-interval", "0", *flags) as (process, logs):
        yield process, logs, logs.wait_for("workers serving")[0], metrics_port


@pytest.fixture
def workers(model_repository):
    with running_workers(model_repository) as running:
        yield running


@contextlib.contextmanager
def open_connections(target: str, count: int):
    """``count`` connections, each having answered one call, kept open."""
    channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(count)]
    try:
        for channel in channels:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(REQUEST, timeout=30)
        yield channels
    finally:
        for channel in channels:
            channel.close()


def descriptor_targets(pid: int) -> set[str]:
    """What process ``pid``'s descriptors point to: ``socket:[inode]``, ``pipe:[inode]``, paths."""
    targets = set()
    for descriptor in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed since listed
            targets.add(os.readlink(f"/proc/{pid}/fd/{descriptor}"))
    return targets


def connections_held(pid: int, port: int) -> int:
    """Established TCP connections on local ``port`` that process ``pid`` holds, from clients
    in this test process: another program's client (a test run beside this one, reconnecting
    to a port it had used) is not this test's."""
    rows = []  # (local port, remote port, inode) of every established connection
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "01":
                rows.append((int(fields[1].rsplit(":", 1)[1], 16),
                             int(fields[2].rsplit(":", 1)[1], 16), f"socket:[{fields[9]}]"))
    ours, theirs = descriptor_targets(os.getpid()), descriptor_targets(pid)
    clients = {local for local, remote, inode in rows if remote == port and inode in ours}
    return sum(local == port and remote in clients and inode in theirs
               for local, remote, inode in rows)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def calls_over_connections(target: str, connections: int, per_connection: int) -> None:
    for _ in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        with grpc.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(per_connection):
                assert stub.ModelInfer(REQUEST, timeout=30).outputs[0].name == "probabilities"


def statistics(target: str) -> pb.ModelStatistics:
    with grpc.insecure_channel(target) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name="mlp", version="2"), timeout=30)
    return stats.model_stats[0]


def test_workers_share_the_port_and_their_metrics_add_up(workers):
    process, _, started, metrics_port = workers
    target, pids = started["address"], started["pids"]
    assert len(pids) == 2 and process.pid not in pids
    calls_over_connections(target, connections=8, per_connection=5)
    samples = scrape_metrics(metrics_port)
    assert value(samples, "fmnist_requests_total", **OK_CALLS) == 40
    # ModelStatistics answers for every worker, whichever worker answers it
    stats = statistics(target)
    assert stats.inference_stats.success.count == 40
    batches = stats.batch_stats  # every worker's onnxruntime calls, by batch size
    assert sum(batch.compute_infer.count for batch in batches) == stats.execution_count > 0
    assert sum(b.batch_size * b.compute_infer.count for b in batches) == stats.inference_count


def test_a_client_sending_slowly_does_not_hold_up_other_scrapes(workers):
    """The metrics process answers each scrape on its own thread: a client that trickles its
    request (each byte within the read timeout) used to keep every other scrape waiting."""
    metrics_port = workers[3]
    stop, started = threading.Event(), threading.Event()

    def trickle():
        with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as slow:
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                slow.sendall(bytes([byte]))
                started.set()
                if stop.wait(1):
                    return

    slow_client = threading.Thread(target=trickle)
    slow_client.start()
    try:
        # its first byte is in: accepted before the scrape's connection, which a server
        # reading one request at a time would leave waiting (a sleep could end before it)
        assert started.wait(10)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=3) as answer:
            assert answer.status == 200
    finally:
        stop.set()
        slow_client.join()


def test_every_worker_listens_and_the_supervisor_holds_no_connection(workers):
    process, logs, started, metrics_port = workers
    target, port = started["address"], port_of(started["address"])
    with open_connections(target, 4):
        assert sum(connections_held(pid, port) for pid in started["pids"]) == 4
        assert connections_held(process.pid, port) == 0
    assert value(scrape_metrics(metrics_port), "fmnist_requests_total", **OK_CALLS) == 4
    # a worker names the client in its logs
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="mlp"), timeout=30)
    assert logs.wait_for("request failed")[0]["peer"].startswith("ipv4:127.0.0.1:")


def pipes(pid: int) -> set[str]:
    return {target for target in descriptor_targets(pid) if target.startswith("pipe:")}


def standard_streams(pid: int) -> set[str]:
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)
            if os.path.exists(f"/proc/{pid}/fd/{fd}")}


def test_a_worker_holds_no_pipe_but_its_standard_streams(workers):
    """Neither the supervisor's wake-up pipe nor another worker's start report (the second
    worker is forked while the first one starts) leaks into a worker."""
    process, _logs, started, _ = workers
    for pid in started["pids"]:
        assert pipes(pid) <= standard_streams(process.pid)


def test_a_stalled_scrape_holds_up_neither_new_connections_nor_later_scrapes(workers):
    process, logs, started, metrics_port = workers
    with socket.create_connection(("127.0.0.1", metrics_port)):  # connects, sends nothing
        with grpc.insecure_channel(started["address"]) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(
                pb.ServerMetadataRequest(), timeout=10)
        assert value(scrape_metrics(metrics_port), "fmnist_requests_total", **METADATA_CALLS) == 1
    metrics_pid = next(pid for pid in children(process.pid) if pid not in started["pids"])
    os.kill(metrics_pid, signal.SIGKILL)
    assert logs.wait_for("metrics process died; starting another")[0]["metrics_pid"] == metrics_pid
    for _ in range(100):  # the replacement serves the same port
        with contextlib.suppress(OSError):
            assert value(scrape_metrics(metrics_port), "fmnist_requests_total",
                         **METADATA_CALLS) == 1
            break
        time.sleep(0.1)
    else:
        pytest.fail("no metrics after the metrics process was replaced")


def held_requests(hold: threading.Event):
    """A stream's requests: one, then none until ``hold`` is set."""
    yield classifier_pb.ClassifyRequest(images=[IMAGES[0].tobytes()])
    hold.wait(60)


def test_a_killed_worker_is_replaced_and_sigterm_stops_everything(workers):
    process, logs, started, metrics_port = workers
    target, pids = started["address"], started["pids"]
    hold = threading.Event()
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
    with grpc.insecure_channel(target, options=options) as channel:  # its worker is killed
        for _ in range(3):
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(REQUEST, timeout=30)
        stream = classifier_pb_grpc.ClassifierStub(channel).ClassifyStream(held_requests(hold))
        next(stream)  # a call in flight when the worker dies
        victim = next(pid for pid in pids if connections_held(pid, port_of(target)))
        os.kill(victim, signal.SIGKILL)
        died = logs.wait_for("worker died; starting another")[0]
        hold.set()
    assert (died["worker_pid"], died["status"]) == (victim, "killed by SIGKILL")
    logs.wait_for("serving", count=3)  # the replacement serves
    replacement = logs.wait_for("worker serving")[0]["worker_pid"]
    assert replacement not in pids
    with open_connections(target, 16):  # the kernel gives the replacement some of them
        assert connections_held(replacement, port_of(target)) > 0
    calls_over_connections(target, connections=4, per_connection=2)
    # the dead worker's counts stay in the sum, and in files its replacement carries on (the
    # metrics directory keeps one set per slot, however many workers died: R12); its call in
    # flight is not; ModelStatistics counts the stream's too, by mlp
    samples = scrape_metrics(metrics_port)
    assert value(samples, "fmnist_requests_total", **OK_CALLS) == 3 + 16 + 8
    assert value(samples, "fmnist_requests_in_flight") == 0
    assert statistics(target).inference_stats.success.count == 3 + 16 + 8 + 1
    owners = {name.rsplit("_", 1)[1] for name in os.listdir(started["metrics_dir"])}
    assert owners == {"0.db", "1.db"}
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    logs.wait_for("stopped")
    # each line's "pid" is the process that logs it: the supervisor's lines about a worker
    # named the worker there (a worker's own field overwrote it)
    assert {line["pid"] for line in logs.lines if line.get("logger") == "serving.workers"} == {
        process.pid}
    assert not Path(started["metrics_dir"]).exists()
    for pid in set(pids) - {victim}:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
