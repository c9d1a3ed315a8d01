"""Graceful shutdown: calls in flight finish, new calls are refused, the process exits 0."""

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc
from serving.client.api import ClassifierClient, encode_request
from serving.errors import Cancelled
from serving.pipeline import DRAINING_MESSAGE, Call
from serving.server import ModelServer
from tests.conftest import running_server
from tests.server_process import server_process

BATCH = 500


def batches_of(images, count):
    return [images[i * BATCH : (i + 1) * BATCH] for i in range(count)]


async def test_streams_in_flight_finish_while_new_calls_are_refused(server, stub, channel,
                                                                    test_set, first_refusal):
    batches = batches_of(test_set[0], 8)
    calls = [stub.ClassifyStream() for _ in range(3)]
    for call in calls:  # each call is in flight: the server has answered its first batch
        await call.write(encode_request(batches[0], request_id="0"))
        assert (await call.read()).request_id == "0"
    assert server.admission.in_flight == 3

    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(asyncio.to_thread(server.stop, 30))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    refused = await first_refusal(lambda: stub.Classify(encode_request(batches[0])))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE

    for call in calls:
        for index, batch in enumerate(batches[1:], start=1):
            await call.write(encode_request(batch, request_id=str(index)))
        await call.done_writing()
    for call in calls:
        answers = []
        while (response := await call.read()) is not grpc.aio.EOF:
            answers.append(response)
        assert [a.request_id for a in answers] == [str(i) for i in range(1, len(batches))]
        assert all(len(a.results) == BATCH for a in answers)
        assert await call.code() == grpc.StatusCode.OK
    watch.cancel()
    await stopping
    assert server.admission.in_flight == 0


def test_sigterm_drains_the_server_process_and_exits_0(model_repository, test_set, grpc_server):
    with server_process(model_repository, "--grace-period", "30",
                        "--workers", "1",  # one process: this test follows one server's log
                        "--grpc-server", grpc_server) as (process, logs):
        target = logs.wait_for("serving")[0]["address"]
        assert [entry["model"] for entry in logs.matching("model loaded")] == [
            "baseline", "mlp", "mlp", "softmax"]

        batches = batches_of(test_set[0], 6)
        terminated = threading.Event()

        def requests():
            yield encode_request(batches[0], request_id="0")
            terminated.wait(30)
            for index, batch in enumerate(batches[1:], start=1):
                yield encode_request(batch, request_id=str(index))

        with grpc.insecure_channel(target) as channel:
            stream = classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(requests())
            answers = [next(stream)]
            process.send_signal(signal.SIGTERM)
            logs.wait_for("draining")
            terminated.set()
            answers += list(stream)
        assert [a.request_id for a in answers] == [str(i) for i in range(len(batches))]
        assert process.wait(60) == 0
        logs.wait_for("stopped")
        messages = [entry["message"] for entry in logs.lines]
        assert messages[-3:] == ["shutdown requested", "draining", "stopped"]
        assert logs.lines[-2]["in_flight"] == 1


# serve() in a process whose main thread gets SIGTERM the moment it has woken from a wait
# of its own and holds that wait's lock (or, if it takes none, 2 s after it serves)
SIGTERM_INSIDE_A_WAIT = """
import signal, sys, threading
from serving import logs, server
from serving.settings import settings_from

def inject(frame, event, _arg):
    if event == "return" and frame.f_code.co_name == "_acquire_restore":
        sys.setprofile(None)
        signal.raise_signal(signal.SIGTERM)

def serving(_server):
    threading.Timer(2.0, signal.raise_signal, (signal.SIGTERM,)).start()
    sys.setprofile(inject)

settings = settings_from(sys.argv[1:])
logs.configure(settings.log_level, settings.log_format)
server.serve(settings, on_ready=serving)
"""


def test_sigterm_that_lands_inside_the_main_threads_wait_stops_the_server(model_repository):
    """The handler set a threading.Event that the main thread waited on: landing while that
    wait held the Event's lock, it blocked on the same lock for ever, and the server
    outlived SIGTERM with "serving" as its last line (seen in CI, 2 runs in about 25)."""
    flags = ["--model-repository", str(model_repository), "--host", "127.0.0.1", "--port", "0",
             "--http-port", "0", "--poll-interval", "0", "--grace-period", "1",
             "--log-format", "json"]
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_INSIDE_A_WAIT, *flags],
                               stderr=subprocess.PIPE, text=True)
    try:
        log = process.communicate(timeout=20)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running 20 s after SIGTERM; its log: {process.communicate()[1]}")
    assert process.returncode == 0, log
    assert [json.loads(line)["message"] for line in log.splitlines()][-1] == "stopped"


def test_a_long_call_in_flight_does_not_keep_the_connection_refusing(settings, test_set):
    """A stream open at shutdown kept its connection, on which every new call was refused
    UNAVAILABLE until the stream ended: a client connected through a Kubernetes Service (one
    connection) could reach no other pod for the whole grace period. After a moment of
    refusals the server says GOAWAY: the client's next calls go on a new connection (here to
    nothing: UNAVAILABLE at once), while the stream goes on over the old one to its end."""
    batches = batches_of(test_set[0], 3)
    resume = threading.Event()

    def requests():
        yield encode_request(batches[0], request_id="0")
        resume.wait(30)
        yield from (encode_request(b, request_id=str(i)) for i, b in enumerate(batches[1:], 1))

    server = running_server(dataclasses.replace(settings, grace_period=20))
    with server as running, grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        stream = stub.ClassifyStream(requests())
        answers = [next(stream)]
        stopping = threading.Thread(target=running.stop, args=(20,))
        stopping.start()  # the old server: UNAVAILABLE on the connection for 20 s
        # refused for a moment (a second at most: REFUSING_AT_MOST_SECONDS), not for the 20 s
        # of the grace: given half of it
        seen = refused_until_stopped(lambda: stub.Classify(
            encode_request(batches[0][:1]), timeout=2, wait_for_ready=False), within_s=10)
        # a call racing the GOAWAY may end CANCELLED (README, "SIGTERM under load")
        assert seen <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
        resume.set()
        answers += list(stream)
        stopping.join(30)
    assert [a.request_id for a in answers] == ["0", "1", "2"]


def refused_until_stopped(call, within_s: float) -> set[grpc.StatusCode]:
    """The codes ``call()`` failed with, called until it fails otherwise than by a draining
    server's refusal: its gRPC server's stop has begun (GOAWAY, the port closed)."""
    deadline, seen = time.monotonic() + within_s, set()
    while time.monotonic() < deadline:
        try:
            call()
        except grpc.RpcError as error:
            seen.add(error.code())
            if error.details() != DRAINING_MESSAGE:
                return seen
        time.sleep(0.05)
    raise AssertionError(f"still refusing calls {within_s} s on: {seen}")


def test_our_client_rides_through_a_replicas_drain(settings, test_set):
    """A draining server refuses new calls UNAVAILABLE for up to a second before its GOAWAY:
    a client with connections to two replicas (a headless Service, round_robin) got those
    refusals as errors at every rollout. Its retry policy sends them to the other replica.
    A drain refuses until no call came for DRAIN_QUIET_SECONDS: one that no call reached
    in time (every other call, on a busy machine) shows nothing, and is tried again."""
    for _ in range(5):
        with running_server(settings) as other, running_server(settings) as draining:
            target = f"ipv4:127.0.0.1:{draining.port},127.0.0.1:{other.port}"
            with ClassifierClient(target, timeout=10, lb_policy="round_robin") as client:
                client.classify(test_set[0][:1])
                stopping = threading.Thread(target=draining.stop, args=(5,))
                stopping.start()
                while stopping.is_alive():
                    assert len(client.classify(test_set[0][:1]).model.labels) == 1
                stopping.join()
        if draining.admission.refused:
            break
    assert draining.admission.refused > 0, "no call reached the draining server in 5 drains"


def test_a_cancelled_call_is_not_blamed_on_its_client_alone():
    """A stop's grace cuts calls too, and which of the two ended a call is not known where it
    is logged: a call the grace cut was logged as "call cancelled by the client"."""
    gone = Call("/fashion_mnist.v1.Classifier/ClassifyStream", is_active=lambda: False).gone()
    assert isinstance(gone, Cancelled)
    assert str(gone) == "call cancelled (by its client, or at the end of a stop's grace)"


def test_the_whole_server_is_not_serving_until_it_has_started(settings):
    """grpc_health starts the whole server ("") at SERVING: a probe on the health port, which
    listens before the services' statuses are set, saw "" SERVING and the Classifier
    NOT_FOUND (the full suite hit it under load)."""
    server = ModelServer.from_settings(settings)
    request = health_pb2.HealthCheckRequest(service="")
    assert server.health.Check(request, None).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_client_sees_unavailable_once_the_server_is_gone(settings):
    with running_server(settings) as server:
        target = f"127.0.0.1:{server.port}"
    with ClassifierClient(target, timeout=5) as client, pytest.raises(grpc.RpcError) as failed:
        client.list_models()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_drains_like_sigterm_unless_nohup_ignores_it(model_repository, workers):
    """SIGHUP (a closed terminal or ssh session, `kill -HUP`) killed the server, or its
    supervisor, on the spot: calls in flight cut, no log line, the metrics directory left.
    It now drains as SIGTERM does; under nohup (SIGHUP ignored from the start) it still
    serves on."""
    stopped = 1 + 2 * (workers == "2")  # each worker's "stopped", then the supervisor's
    with server_process(model_repository, "--workers", workers, "--poll-interval", "0",
                        "--grace-period", "5") as (process, logs):
        target = logs.wait_for("serving", count=int(workers))[0]["address"]
        with grpc.insecure_channel(target) as channel:
            classifier_pb2_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest())
        process.send_signal(signal.SIGHUP)
        assert process.wait(30) == 0
        assert len(logs.wait_for("stopped", count=stopped)) == stopped
    with server_process(model_repository, "--workers", workers, "--poll-interval", "0",
                        prefix=("nohup",)) as (process, logs):
        target = logs.wait_for("serving", count=int(workers))[0]["address"]
        process.send_signal(signal.SIGHUP)
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # then SIGTERM: a SIGHUP heard would be the stop's first signal, whenever it was
        # handled (pending signals run lowest first), where a sleep could end before it
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert {line.get("signal") for line in logs.all_lines()
            if line["message"] == "shutdown requested"} == {"SIGTERM"}


@pytest.mark.parametrize(("workers", "to_group"), [("1", True), ("2", True), ("2", False)])
def test_a_second_ctrl_c_while_draining_exits_at_once(model_repository, workers, to_group):
    """Ctrl-C pressed again while the server drained for a call in flight did nothing: the
    operator waited out the grace period. A second SIGINT now ends it at once, as in uvicorn
    (130 in a shell: one process is killed by it, a supervisor exits 130), sent to the process
    group (a terminal's Ctrl-C) or to the supervisor, even once the native server's stop,
    which holds the main thread, has begun (the refusals end within a second)."""
    interrupt = (lambda: os.killpg(process.pid, signal.SIGINT)) if to_group else (
        lambda: process.send_signal(signal.SIGINT))
    with server_process(model_repository, "--workers", workers, "--grace-period", "60",
                        "--poll-interval", "0", "--http-port", "0",
                        prefix=("setsid",)) as (process, logs):  # a process group of its own
        target = logs.wait_for("serving", count=int(workers))[0]["address"]
        held = threading.Event()

        def requests():
            yield pb.ClassifyRequest(images=[bytes(784)])
            held.wait(30)

        with grpc.insecure_channel(target) as channel:
            stream = classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(requests())
            next(stream)
            interrupt()
            assert logs.wait_for("draining", count=int(workers))[-1]["grace_s"] == 60
            refused_until_stopped(lambda: _call_on_a_new_connection(target), within_s=30)
            interrupt()
            assert process.wait(10) == (-signal.SIGINT if workers == "1" else 130)
            with pytest.raises(grpc.RpcError) as cut:
                next(stream)
            held.set()
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE


def _call_on_a_new_connection(target: str) -> None:
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ours:
        classifier_pb2_grpc.ClassifierStub(ours).ListModels(pb.ListModelsRequest(), timeout=5)
