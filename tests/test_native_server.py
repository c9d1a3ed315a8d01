"""The native gRPC server (serving/native) against grpcio's own, both built by
serving.grpc_transport.grpc_server: what handlers see of their context, cancellation,
interceptors for every kind of method, the log naming the transport. Threads at work and at
stop and health Watch at stop are tests/test_native_server_threads.py's, ports
tests/test_native_server_ports.py's.

R3 (request bytes that cannot be read are refused, never parsed as an empty message) cannot be
provoked from a client: gRPC C++ hands the server messages it has already decompressed,
so ``ByteBuffer::DumpToSingleSlice`` has nothing left that can fail; the refusal is in
``Call::Read``/``CallRead`` (INTERNAL "the request's bytes could not be read").
"""

import dataclasses
import sys
import threading
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from serving import native
from serving.grpc_transport import PipelineInterceptor
from serving.grpc_transport import grpc_server as make_grpc_server
from serving.native.server import NativeServer
from serving.pipeline import Admission, CallPipeline
from serving.security import ServerTls
from tests.conftest import running_server
from tests.echo_service import SERVICE, Echo, started
from tests.pki import make_pki


class Recorder(grpc.ServerInterceptor):
    def __init__(self):
        self.methods = []

    def intercept_service(self, continuation, handler_call_details):
        self.methods.append(handler_call_details.method)
        return continuation(handler_call_details)


@pytest.fixture
def echo_server(grpc_server):
    echo, recorder = Echo(), Recorder()
    server = make_grpc_server(grpc_server, 4, [recorder], 1 << 20, reuse_port=False)
    assert server.transport == grpc_server
    port = started(server, echo.handler())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield echo, recorder, channel
    server.stop(0).wait()


def test_handlers_see_metadata_peer_deadline_and_set_status_and_trailers(echo_server):
    _, _, channel = echo_server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    answer, call = unary.with_call(b"hi", metadata=(("x-asked", "42"),), timeout=5)
    assert answer == b"42|True|True"
    assert ("initial", "yes") in call.initial_metadata()
    assert ("trailing", "yes") in call.trailing_metadata()
    assert ("bin-bin", b"\x00\xff") in call.trailing_metadata()
    for request, code, details in [
        (b"fail", grpc.StatusCode.FAILED_PRECONDITION, "as asked"),
        (b"abort", grpc.StatusCode.PERMISSION_DENIED, "aborted"),
        (b"raise", grpc.StatusCode.UNKNOWN, "Exception calling application: boom"),
    ]:
        with pytest.raises(grpc.RpcError) as failed:
            unary(request, timeout=5)
        assert (failed.value.code(), failed.value.details()) == (code, details)
        assert ("trailing", "yes") in failed.value.trailing_metadata()


def test_calls_ending_while_another_is_at_work_keep_their_answers_and_trailers(echo_server):
    """The native server's polling thread sends an OK end whose thread holds the GIL while
    another thread is at work (here: a held call): the client sees the same answer, trailers
    and status as when the thread sends it."""
    echo, _, channel = echo_server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    held = unary.future(b"hold", timeout=10)
    try:
        assert echo.holding.wait(5)
        for _ in range(3):
            answer, call = unary.with_call(b"hi", metadata=(("x-asked", "7"),), timeout=5)
            assert answer == b"7|True|True"
            assert ("trailing", "yes") in call.trailing_metadata()
            answer, call = unary.with_call(b"empty", timeout=5)
            assert (answer, call.code()) == (b"", grpc.StatusCode.OK)
            assert channel.stream_unary(f"/{SERVICE}/Sum")(iter([b"ab", b"c"]), timeout=5) == b"3"
            echoed = channel.stream_stream(f"/{SERVICE}/Echo")(iter(()), timeout=5)
            assert (list(echoed), echoed.code()) == ([], grpc.StatusCode.OK)
    finally:
        echo.release.set()
    assert held.result().startswith(b"None|")


def test_a_unary_call_without_its_request_is_answered_as_grpcio_answers_it(echo_server):
    _, _, channel = echo_server
    with pytest.raises(grpc.RpcError) as refused:
        channel.stream_unary(f"/{SERVICE}/Unary")(iter(()), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # grpcio names the method as bytes ("b'/test.Echo/Unary'"); the native server as text
    assert f"/{SERVICE}/Unary" in refused.value.details()
    assert refused.value.details().endswith(" requires exactly one request message.")


def test_initial_metadata_twice_is_an_error_not_a_crash(echo_server):
    _, _, channel = echo_server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.RpcError) as failed:
        unary(b"metadata twice", timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert "initial metadata" in failed.value.details().lower()
    assert unary(b"", timeout=5).startswith(b"None|")  # the server still serves


@pytest.mark.parametrize("request_bytes", [b"bad initial metadata", b"bad trailing metadata"])
def test_metadata_grpc_refuses_ends_the_call_internal_not_the_process(echo_server,
                                                                      request_bytes):
    """An upper-case key or a line break in a text value: gRPC C++ asserted and aborted the
    whole process (SIGABRT); grpcio answers INTERNAL "Invalid metadata"."""
    _, _, channel = echo_server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.RpcError) as refused:
        unary(request_bytes, timeout=5)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.INTERNAL, "Invalid metadata")
    assert unary(b"hi", timeout=5).startswith(b"None|")  # still serving


def test_a_handler_raising_system_exit_ends_its_call_and_stop_returns(grpc_server):
    server = make_grpc_server(grpc_server, 2, [], 1 << 20, reuse_port=False)
    port = started(server, Echo().handler())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(f"/{SERVICE}/Unary")(b"exit", timeout=5)
        assert failed.value.code() != grpc.StatusCode.OK
    stopping = threading.Thread(target=lambda: server.stop(0).wait(), daemon=True)
    stopping.start()
    stopping.join(10)
    assert not stopping.is_alive(), "stop() did not return"


def test_stop_returns_while_a_handler_works_and_its_event_waits_for_it(grpc_server):
    """A handler still at work when its call is cancelled: grpcio's stop set its event while
    the handler ran on (the drain then logged "stopped" before the call was counted), and the
    native server's stop() waited for it, for ever if it never returned. Now either returns
    at once, and its event is set once the handler has ended (the drain bounds its wait)."""
    echo = Echo()
    server = make_grpc_server(grpc_server, 2, [], 1 << 20, reuse_port=False)
    port = started(server, echo.handler())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        held = channel.unary_unary(f"/{SERVICE}/Unary").future(b"hold", timeout=30)
        assert echo.holding.wait(5)
        stopped: list[threading.Event] = []
        stopping = threading.Thread(target=lambda: stopped.append(server.stop(0)), daemon=True)
        stopping.start()
        stopping.join(10)
        assert stopped, "stop() did not return while a handler was at work"
        with pytest.raises(grpc.RpcError):
            held.result()  # cancelled
        assert not stopped[0].wait(0.2)  # the handler still holds its thread
        echo.release.set()
        assert stopped[0].wait(10)


def test_handlers_see_the_mutual_tls_client_and_abort_with_status(grpc_server, tmp_path):
    pki = make_pki(tmp_path)
    server = make_grpc_server(grpc_server, 2, [], 1 << 20, reuse_port=False)
    server.add_generic_rpc_handlers([Echo().handler()])
    port = server.add_secure_port("127.0.0.1:0", ServerTls.read(
        pki.server_cert, pki.server_key, pki.ca))
    server.start()
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes())
    try:
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            unary = channel.unary_unary(f"/{SERVICE}/Unary")
            assert unary(b"identity", timeout=5) == b"x509_common_name|[b'client']|[b'client']"
            with pytest.raises(grpc.RpcError) as aborted:
                unary(b"abort with status", timeout=5)
            assert aborted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert aborted.value.details() == "full"
            assert ("retry-after", "7") in aborted.value.trailing_metadata()
    finally:
        server.stop(0).wait()


def test_every_kind_of_method_goes_through_the_interceptors(echo_server):
    _, recorder, channel = echo_server
    assert channel.stream_unary(f"/{SERVICE}/Sum")(iter([b"ab", b"cde"]), timeout=5) == b"5"
    echoed = channel.stream_stream(f"/{SERVICE}/Echo")(iter([b"x", b"yz"]), timeout=5)
    assert list(echoed) == [b"x", b"yz"]
    with pytest.raises(grpc.RpcError) as unknown:
        channel.unary_unary(f"/{SERVICE}/Nothing")(b"", timeout=5)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert recorder.methods == [f"/{SERVICE}/Sum", f"/{SERVICE}/Echo", f"/{SERVICE}/Nothing"]


def test_a_call_cancelled_by_the_client_ends_for_its_handler(echo_server, grpc_server):
    echo, _, channel = echo_server
    stream = channel.unary_stream(f"/{SERVICE}/UntilCancelled")(b"", timeout=30)
    assert next(stream) == b"first"
    stream.cancel()
    assert echo.ended.wait(5), "add_callback's callback did not run when the call ended"
    if grpc_server == "native":  # grpcio may never resume a handler whose call has ended
        assert echo.seen_inactive.wait(5), "is_active() stayed true after the client cancelled"


def test_a_handler_aborting_its_stream_through_the_pipeline_is_no_crash(grpc_server, caplog):
    """A package's streaming handler (not the data plane's) that aborts: its status reaches
    the client, the metrics count that status (they counted INTERNAL), and the pipeline logs
    no crash."""
    counted = {"api": "test.Echo", "method": "AbortStream", "model": ""}

    def count(code: str) -> float:
        return REGISTRY.get_sample_value("fmnist_requests_total", {**counted, "code": code}) or 0

    before = count("PERMISSION_DENIED"), count("INTERNAL")
    pipeline = CallPipeline("", Admission())
    server = make_grpc_server(grpc_server, 4, [PipelineInterceptor(pipeline, [])], 1 << 20,
                              reuse_port=False)
    port = started(server, Echo().handler())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.unary_stream(f"/{SERVICE}/AbortStream")(b"", timeout=5)
            assert next(stream) == b"first"
            with pytest.raises(grpc.RpcError) as aborted:
                next(stream)
            assert aborted.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(0).wait()
    assert not [r for r in caplog.records if r.getMessage() == "request crashed"]
    assert (count("PERMISSION_DENIED"), count("INTERNAL")) == (before[0] + 1, before[1])


def test_the_log_names_the_transport(settings, caplog):
    caplog.set_level("INFO", logger="serving.server")
    with running_server(dataclasses.replace(settings, poll_interval=0)):
        pass
    serving = [record for record in caplog.records if record.getMessage() == "serving"]
    assert serving[0].fields["transport"] == settings.grpc_server


@pytest.mark.skipif(not native.available(), reason=f"native server: {native.UNAVAILABLE_REASON}")
def test_a_call_thread_waiting_for_the_next_call_holds_nothing_of_the_last():
    """A pool thread kept its last call, its request and answer in C++ with it, while it
    waited for the next: after sequential 3 MB requests a server's 64 idle threads held 440 MB
    (535 MB RSS, 97 MB once each had taken a small call)."""
    server = make_grpc_server("native", 4, [], 1 << 20, reuse_port=False)
    port = started(server, Echo().handler())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(8):
                channel.unary_unary(f"/{SERVICE}/Unary")(b"x" * 100_000, timeout=5)
        deadline = time.monotonic() + 10
        while (held := _calls_held(server._pool)) is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until every pool thread waits for a call again
        assert held == []
    finally:
        server.stop(0).wait()


def _calls_held(pool: list[threading.Thread]) -> list | None:
    """The native calls the pool threads' frames hold while they wait for the next call
    (None while one is still at work)."""
    frames = [sys._current_frames().get(thread.ident) for thread in pool]
    if any(frame is None or frame.f_code is not NativeServer._serve.__code__ for frame in frames):
        return None
    values = [value for frame in frames for value in frame.f_locals.values()]
    values += [item for value in values if isinstance(value, tuple) for item in value]
    return [value for value in values if type(value).__module__ == "serving.native._server"]
