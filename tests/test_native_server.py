"""The native gRPC server (serving/native) against grpcio's own, both built by
serving.grpc_transport.grpc_server: what handlers see of their context, cancellation,
interceptors for every kind of method, threads at stop, health Watch, a port in use.

R3 (request bytes that cannot be read are refused, never parsed as an empty message) cannot be
provoked from a client: gRPC C++ hands the server messages it has already decompressed,
so ``ByteBuffer::DumpToSingleSlice`` has nothing left that can fail; the refusal is in
``Call::Read``/``CallRead`` (INTERNAL "the request's bytes could not be read").
"""

import dataclasses
import socket
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.grpc_transport import PipelineInterceptor
from serving.grpc_transport import grpc_server as make_grpc_server
from serving.pipeline import Admission, CallPipeline
from serving.security import ServerTls
from tests.conftest import running_server
from tests.pki import make_pki

SERVICE = "test.Echo"


class Recorder(grpc.ServerInterceptor):
    def __init__(self):
        self.methods = []

    def intercept_service(self, continuation, handler_call_details):
        self.methods.append(handler_call_details.method)
        return continuation(handler_call_details)


class _Status(NamedTuple):  # a grpc.Status
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple


class Echo:
    """Raw-bytes handlers that report what they see of their context."""

    def __init__(self):
        self.ended = threading.Event()
        self.seen_inactive = threading.Event()
        self.callbacks_seen: list[bytes] = []

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.send_initial_metadata((("initial", "yes"),))
        context.set_trailing_metadata((("trailing", "yes"), ("bin-bin", b"\x00\xff")))
        metadata = dict(context.invocation_metadata())
        if request == b"fail":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details("as asked")
            return b""
        if request == b"abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted")
        if request == b"raise":
            raise ValueError("boom")
        if request == b"metadata twice":  # grpcio raises ValueError; never an abort
            context.send_initial_metadata((("again", "yes"),))
        if request == b"exit":  # BaseException: the call still ends, the pool thread too
            raise SystemExit(3)
        if request == b"identity":
            name = context.auth_context().get("x509_common_name")
            return f"{context.peer_identity_key()}|{context.peer_identities()}|{name}".encode()
        if request == b"abort with status":
            context.abort_with_status(_Status(grpc.StatusCode.RESOURCE_EXHAUSTED, "full",
                                              (("retry-after", "7"),)))
        remaining = context.time_remaining()  # the client's 5 s, which gRPC may round up
        return (f"{metadata.get('x-asked')}|{context.peer().startswith('ipv4:')}|"
                f"{remaining is not None and 0 < remaining <= 5.1}").encode()

    def until_cancelled(self, request: bytes, context: grpc.ServicerContext):
        context.add_callback(self.ended.set)
        yield b"first"
        self.ended.wait(10)  # the callbacks run when the call ends, while this handler runs
        if not context.is_active():
            self.seen_inactive.set()

    def sum_stream(self, requests, context) -> bytes:
        return str(sum(len(r) for r in requests)).encode()

    def echo_stream(self, requests, context):
        yield from requests

    def wait_for_cancel(self, request: bytes, context: grpc.ServicerContext):
        """Holds its thread, at work, until its own add_callback runs (or 10 s); grpcio may
        not resume it after a cancellation, the native server does."""
        ended = threading.Event()

        def on_end():
            self.callbacks_seen.append(request)
            ended.set()

        context.add_callback(on_end)
        yield b"waiting"
        ended.wait(10)

    def abort_stream(self, request: bytes, context: grpc.ServicerContext):
        yield b"first"
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted while streaming")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "UntilCancelled": grpc.unary_stream_rpc_method_handler(self.until_cancelled),
            "Sum": grpc.stream_unary_rpc_method_handler(self.sum_stream),
            "Echo": grpc.stream_stream_rpc_method_handler(self.echo_stream),
            "AbortStream": grpc.unary_stream_rpc_method_handler(self.abort_stream),
            "WaitForCancel": grpc.unary_stream_rpc_method_handler(self.wait_for_cancel),
        })


@pytest.fixture
def echo_server(grpc_server):
    echo, recorder = Echo(), Recorder()
    server = make_grpc_server(grpc_server, 4, [recorder], 1 << 20, reuse_port=False)
    assert server.transport == grpc_server
    server.add_generic_rpc_handlers([echo.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
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


def test_initial_metadata_twice_is_an_error_not_a_crash(echo_server):
    _, _, channel = echo_server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.RpcError) as failed:
        unary(b"metadata twice", timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert "initial metadata" in failed.value.details().lower()
    assert unary(b"", timeout=5).startswith(b"None|")  # the server still serves


def test_a_handler_raising_system_exit_ends_its_call_and_stop_returns(grpc_server):
    server = make_grpc_server(grpc_server, 2, [], 1 << 20, reuse_port=False)
    server.add_generic_rpc_handlers([Echo().handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(f"/{SERVICE}/Unary")(b"exit", timeout=5)
        assert failed.value.code() != grpc.StatusCode.OK
    stopping = threading.Thread(target=lambda: server.stop(0).wait(), daemon=True)
    stopping.start()
    stopping.join(10)
    assert not stopping.is_alive(), "stop() did not return"


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


def test_streams_waiting_for_their_clients_leave_unary_calls_a_thread_at_work(grpc_server):
    """The native server wakes only ``max_running`` threads for new calls; a thread whose
    stream waits for its client is not at work, so streams beyond that number do not keep a
    unary call queued."""
    server = make_grpc_server(grpc_server, 16, [], 1 << 20, reuse_port=False, max_running=4)
    server.add_generic_rpc_handlers([Echo().handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
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


def test_handlers_at_work_waiting_for_their_cancellation_hear_of_it(grpc_server):
    """A cancelled call's add_callbacks run even while every thread that may be at work is
    (here blocked in Python, waiting for exactly that): its news does not queue behind them."""
    echo = Echo()
    server = make_grpc_server(grpc_server, 8, [], 1 << 20, reuse_port=False, max_running=2)
    server.add_generic_rpc_handlers([echo.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
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


def test_a_handler_aborting_its_stream_through_the_pipeline_is_no_crash(grpc_server, caplog):
    """A package's streaming handler (not the data plane's) that aborts: its status reaches
    the client, and the pipeline logs no crash."""
    pipeline = CallPipeline("", Admission())
    server = make_grpc_server(grpc_server, 4, [PipelineInterceptor(pipeline, [])], 1 << 20,
                              reuse_port=False)
    server.add_generic_rpc_handlers([Echo().handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
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
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        stopping.join(10)
        assert not stopping.is_alive()
    if settings.grpc_server == "native":  # grpcio leaves its executor's threads
        assert _threads() <= before, "threads left behind"


def test_reuse_port_follows_the_setting(grpc_server):
    first = make_grpc_server(grpc_server, 1, [], 4096, reuse_port=True)
    port = first.add_insecure_port("127.0.0.1:0")
    second = make_grpc_server(grpc_server, 1, [], 4096, reuse_port=True)
    alone = make_grpc_server(grpc_server, 1, [], 4096, reuse_port=False)
    try:
        assert second.add_insecure_port(f"127.0.0.1:{port}") == port
        with pytest.raises(RuntimeError):
            alone.add_insecure_port(f"127.0.0.1:{port}")
    finally:
        for server in (first, second, alone):
            server.stop(0).wait()


def test_a_port_in_use_fails_one_process_with_one_line(model_repository, grpc_server):
    if grpc_server == "grpcio":
        pytest.skip("grpcio's core logs a line of its own (E... add_port.cc) before the error")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        status = subprocess.run(
            [sys.executable, "-m", "serving", "--model-repository", str(model_repository),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--grpc-server", grpc_server],
            capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in status.stderr.splitlines() if " INFO " not in line]
    assert status.returncode == 1
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"fmnist-serve: error: cannot listen on 127.0.0.1:{port}: ")


def test_the_log_names_the_transport(settings, caplog):
    caplog.set_level("INFO", logger="serving.server")
    with running_server(dataclasses.replace(settings, poll_interval=0)):
        pass
    serving = [record for record in caplog.records if record.getMessage() == "serving"]
    assert serving[0].fields["transport"] == settings.grpc_server
