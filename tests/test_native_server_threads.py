"""The native gRPC server (serving/native) against grpcio's own: its threads (streams waiting
for their clients leave unary calls a thread at work, cancellations reach handlers at work, a
stopped server leaves none and ends health watches). Its ports are
tests/test_native_server_ports.py's; what handlers see of their context is
tests/test_native_server.py's.
"""

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving import native
from serving.grpc_transport import HealthServicer
from serving.grpc_transport import grpc_server as make_grpc_server
from tests.conftest import local_settings, running_server
from tests.echo_service import SERVICE, Echo, started
from tests.server_process import server_process


def test_streams_waiting_for_their_clients_leave_unary_calls_a_thread_at_work(grpc_server):
    """The native server wakes only ``max_running`` threads for new calls; a thread whose
    stream waits for its client is not at work, so streams beyond that number do not keep a
    unary call queued."""
    server = make_grpc_server(grpc_server, 16, [], 1 << 20, reuse_port=False, max_running=4)
    port = started(server, Echo().handler())
    release = threading.Event()

    def one_then_wait():
        yield b"x"
        release.wait(30)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.stream_stream(f"/{SERVICE}/Echo")
            streams = [echo(one_then_wait(), timeout=30) for _ in range(5)]
            assert [next(stream) for stream in streams] == [b"x"] * len(streams)
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=5) == b"None|True|True"
            release.set()
            assert all(list(stream) == [] for stream in streams)
    finally:
        release.set()
        server.stop(0).wait()


def test_calls_whose_message_never_comes_hold_no_thread():
    """A unary call is handed to a thread once its message is in: calls that never sent it
    (headers only) held every thread, and health and every other call waited behind them.
    grpcio's own server still waits for it on a thread (README, "How a request flows")."""
    server = make_grpc_server("native", 4, [], 1 << 20, reuse_port=False, max_running=4)
    port = started(server, Echo().handler())
    release = threading.Event()

    def never():
        release.wait(30)
        yield from ()

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stalled = channel.stream_unary(f"/{SERVICE}/Unary")
            futures = [stalled.future(never(), timeout=30) for _ in range(8)]
            for _ in range(5):  # answered all along, also once the stalled calls are all in
                assert channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=5) == \
                    b"None|True|True"
                time.sleep(0.2)
            release.set()
            for future in futures:  # then they end as calls without a message do
                assert future.exception(10).code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        release.set()
        server.stop(0).wait()


def test_handlers_at_work_waiting_for_their_cancellation_hear_of_it(grpc_server):
    """A cancelled call's add_callbacks run even while every thread that may be at work is
    (here blocked in Python, waiting for exactly that): its news does not queue behind them."""
    echo = Echo()
    server = make_grpc_server(grpc_server, 8, [], 1 << 20, reuse_port=False, max_running=2)
    port = started(server, echo.handler())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait = channel.unary_stream(f"/{SERVICE}/WaitForCancel")
            streams = [wait(str(index).encode(), timeout=30) for index in range(2)]
            assert [next(stream) for stream in streams] == [b"waiting", b"waiting"]
            for stream in streams:
                stream.cancel()
            deadline = time.monotonic() + 5
            while len(echo.callbacks_seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert sorted(echo.callbacks_seen) == [b"0", b"1"]
    finally:
        server.stop(0).wait()

def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


def test_a_stopped_server_leaves_no_thread_and_ends_health_watches(settings):
    before = _threads()
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopping = threading.Thread(target=server.stop, args=(0.2,))
        stopping.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert list(watch) == []  # then it ends, OK, before the server's GOAWAY
        assert watch.code() == grpc.StatusCode.OK
        stopping.join(10)
        assert not stopping.is_alive()
    assert _threads() <= before, f"threads left behind: {_threads() - before}"


def test_health_watches_that_end_log_no_error(settings, caplog):
    """grpc_health ends a Watch by sending None; the native server tried to serialize it and
    logged a traceback per Watch (cancelled, past its deadline, or at stop). On grpcio the
    cancelled one, in 3 runs of 20, was not heard of before the stop (why:
    test_watches_cancelled_as_they_start_leave_no_callback_behind)."""
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        health = health_pb2_grpc.HealthStub(channel)
        for timeout in (30, 0.3):
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            if timeout == 30:
                watch.cancel()
            with pytest.raises(grpc.RpcError):
                next(watch)
        left_open = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(left_open).status == health_pb2.HealthCheckResponse.SERVING
        _until_watches_ended(server.health, still_open=1)  # the cancelled, then the stop's
        server.stop(0.2)
    assert [record.getMessage() for record in caplog.records if record.levelno >= 40] == []


def _until_watches_ended(servicer: HealthServicer, still_open: int, timeout_s: float = 10):
    """Until the server has heard of every Watch's end but ``still_open`` ones: each gone from
    the servicer and its end sent (``sends`` has sent what was queued before). A sleep instead
    let the ends come at the stop, on a loaded machine, and the cancellations' path go
    untested."""
    deadline = time.monotonic() + timeout_s
    while sum(map(len, servicer._send_response_callbacks.values())) > still_open:
        assert time.monotonic() < deadline, f"the Watches' ends not heard of in {timeout_s} s"
        time.sleep(0.01)
    servicer.sends.submit(int).result(timeout_s)  # each end queued before it: sent


@pytest.mark.timeout(90)
def test_health_watches_opened_and_cancelled_in_a_loop_leave_the_server_serving(
        model_repository, grpc_server):
    """On grpcio, grpc_health's non-blocking Watch deadlocked the server for good within a
    few thousand open-and-cancel cycles: every call DEADLINE_EXCEEDED, SIGTERM never ended.
    The race is grpcio's: three clients for 4 s caught it in most runs, not every one."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0",
                        "--grpc-server", grpc_server, "--grace-period", "1") as (process, logs):
        address = logs.wait_for("serving")[0]["address"]

        def open_and_cancel(until: float) -> None:
            with grpc.insecure_channel(address, [("grpc.use_local_subchannel_pool", 1)]) as own:
                watch = own.unary_stream("/grpc.health.v1.Health/Watch")  # bytes in and out
                while time.monotonic() < until:
                    call = watch(b"", timeout=3)
                    next(call)
                    call.cancel()

        clients = [threading.Thread(target=open_and_cancel, args=(time.monotonic() + 4,))
                   for _ in range(3)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
        with grpc.insecure_channel(address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            assert check(health_pb2.HealthCheckRequest(), timeout=3).status == \
                health_pb2.HealthCheckResponse.SERVING
        process.terminate()
        assert process.wait(20) == 0


def test_watches_cancelled_as_they_start_leave_no_callback_behind(grpc_server):
    """A Watch cancelled before grpc_health had registered it kept its send callback (with its
    call) in the servicer for good, and every later health change wrote to all of them: any
    client could grow the server's memory, without a token. On the native server, one
    cancelled before its first answer; on grpcio, one cancelled as that answer came (54 to
    92 of 100 in 10 runs): its call ended before grpc_health added its end, which grpcio never
    ran."""
    servicer = HealthServicer()
    server = make_grpc_server(grpc_server, 2, [], 1 << 20, reuse_port=False)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = started(server)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for index in range(200):
                watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                if index % 2:  # or as its first answer comes
                    next(watch)
                watch.cancel()

            def registered() -> int:
                return sum(map(len, servicer._send_response_callbacks.values()))

            deadline = time.monotonic() + 5
            while registered() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert registered() == 0
    finally:
        server.stop(0).wait()


def test_open_health_watches_leave_checks_and_calls_answered(grpc_server):
    """A Watch that blocked held a call thread for its whole life: as many Watches as threads
    (a client-side health check opens one per connection) starved Checks and every call."""
    echo = Echo()
    server = make_grpc_server(grpc_server, 2, [], 1 << 20, reuse_port=False)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = started(server, echo.handler())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                       for _ in range(4)]
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=3).status == \
                health_pb2.HealthCheckResponse.SERVING
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=3).startswith(b"None|")
            for watch in watches:
                watch.cancel()
    finally:
        server.stop(0).wait()


def test_health_checks_never_wait_for_the_threads_at_work(grpc_server):
    """With every thread at work taken (here 1 of 1, held by a handler), a new call waits for
    one to come back; a health check waited too, and under load kubelet's probes timed out
    (p50 1.4 s at 150 clients sending 1024 images)."""
    echo = Echo()
    server = make_grpc_server(grpc_server, 4, [], 1 << 20, reuse_port=False, max_running=1)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = started(server, echo.handler())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            held = channel.unary_unary(f"/{SERVICE}/Unary").future(b"hold", timeout=10)
            assert echo.holding.wait(5)
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            echo.release.set()
            assert held.result().startswith(b"None|")
    finally:
        echo.release.set()
        server.stop(0).wait()


def test_a_watch_opened_after_the_watches_ended_ends_once_answered(settings):
    """A client reopening its Watch as the server drained kept it open, and the native
    server's stop, which lets calls finish, waited for it to the end of the grace."""
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        server.health.end_watches()
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=3)
        assert [answer.status for answer in watch] == [health_pb2.HealthCheckResponse.SERVING]
        assert watch.code() == grpc.StatusCode.OK


@pytest.mark.skipif(not native.available(), reason="the native gRPC server is not built")
def test_watches_the_drain_ended_leave_the_native_servers_parked_calls(model_repository):
    """A parked Watch that the drain's end_watches ended, from its own thread, stayed in the
    native server's table of parked calls until the server went: one entry per Watch."""
    settings = local_settings(model_repository=model_repository, grpc_server="native",
                              poll_interval=0)
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        watches = [health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10) for _ in range(3)]
        assert [next(watch).status for watch in watches] == (
            [health_pb2.HealthCheckResponse.SERVING] * 3)
        server.health.end_watches()
        assert [list(watch) for watch in watches] == [[]] * 3
        assert server._server._watched == {}
