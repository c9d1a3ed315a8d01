"""The native front door's contract (serving/native/frontdoor.cc), with a Python handler and a
real backend: what a direct call hands to Python and how Python's answer reaches the client;
that every other method is relayed with its messages, metadata, deadline and status; and that
a running server hides its grpc.aio backend in a private directory."""

import contextlib
import os
import socket
import stat
import threading
import time
from concurrent import futures

import grpc
import pytest

from serving.frontdoor import FrontDoor
from serving.native import _frontdoor
from serving.server import running_server
from serving.settings import Settings

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"
MAX_BYTES = 1 << 20


def reversed_bytes(request: bytes) -> bytes:
    return request[::-1]


@contextlib.contextmanager
def front_door(handler, backend: str = "unix:/nonexistent/backend.sock"):
    """A front door on 127.0.0.1:<free port> whose direct method is ``UNARY``; yields a
    channel to it."""
    server = _frontdoor.Server("127.0.0.1:0", handler, [UNARY], backend, MAX_BYTES)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        server.shutdown(1.0)


def call(channel, request: bytes = b"abc", **options) -> bytes:
    return channel.unary_unary(UNARY)(request, timeout=options.pop("timeout", 5), **options)


def answering(code: int = 0, message: str = "", respond=reversed_bytes):
    """A handler that answers at once, from the gRPC thread, and records what it was given."""
    seen = []

    def handler(*call):
        method, request, metadata, peer, deadline, completion = call
        seen.append((method, request, metadata, peer, deadline))
        completion(code, message, respond(request) if code == 0 else None)

    return handler, seen


def test_a_direct_call_gets_the_handlers_answer():
    handler, seen = answering()
    with front_door(handler) as channel:
        assert call(channel, b"\x00hello\xff") == b"\xffolleh\x00"
    assert [method for method, *_ in seen] == [UNARY]


def test_a_direct_call_gets_the_handlers_status_code_and_message():
    handler, _ = answering(grpc.StatusCode.INVALID_ARGUMENT.value[0], "no such image")
    with front_door(handler) as channel, pytest.raises(grpc.RpcError) as refused:
        call(channel)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "no such image"


def test_the_handler_sees_request_metadata_peer_and_deadline():
    handler, seen = answering()
    with front_door(handler) as channel:
        started = time.time()
        call(channel, b"xyz", timeout=7,
             metadata=[("x-text", "hello"), ("x-blob-bin", b"\x00\xff")])
    ((method, request, metadata, peer, deadline),) = seen
    assert (method, request) == (UNARY, b"xyz")
    assert ("x-text", "hello") in metadata and ("x-blob-bin", b"\x00\xff") in metadata
    assert peer.startswith("ipv4:127.0.0.1:")
    assert started + 6 < deadline < started + 8  # seconds since the epoch, as time.time()


def test_no_deadline_is_none():
    handler, seen = answering()
    with front_door(handler) as channel:
        channel.unary_unary(UNARY)(b"x")
    assert seen[0][4] is None


def test_a_completion_dropped_unanswered_ends_the_call_internal():
    def forgetful(*call):
        return None

    with front_door(forgetful) as channel, pytest.raises(grpc.RpcError) as dropped:
        call(channel)
    assert dropped.value.code() == grpc.StatusCode.INTERNAL
    assert "without answering" in dropped.value.details()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # it is printed
def test_a_handler_that_raises_ends_the_call_internal():
    def broken(*call):
        raise ValueError("a bug")

    with front_door(broken) as channel, pytest.raises(grpc.RpcError) as crashed:
        call(channel)
    assert crashed.value.code() == grpc.StatusCode.INTERNAL
    assert "a bug" not in crashed.value.details()  # no internals leak to the client


def test_a_call_is_answered_once():
    errors = []

    def twice(*call):
        completion = call[-1]
        completion(0, "", b"first")
        try:
            completion(0, "", b"second")
        except RuntimeError as error:
            errors.append(str(error))

    with front_door(twice) as channel:
        assert call(channel) == b"first"
    assert errors == ["this call was already answered"]


def test_an_answer_can_come_later_from_another_thread():
    def later(*call):
        request, completion = call[1], call[-1]
        threading.Timer(0.05, completion, (0, "", request * 2)).start()

    with front_door(later) as channel:
        assert call(channel, b"ab") == b"abab"


def test_a_cancelled_call_reaches_the_handlers_cancel():
    cancelled = threading.Event()
    def slow(*call):
        completion = call[-1]

        def cancel():
            cancelled.set()
            completion(grpc.StatusCode.CANCELLED.value[0], "stopped")

        return cancel

    with front_door(slow) as channel:
        with pytest.raises(grpc.RpcError) as expired:
            call(channel, timeout=0.2)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert cancelled.wait(5)


class EchoBackend(grpc.GenericRpcHandler):
    """A stream method that echoes each message, or aborts on b"abort"."""

    def __init__(self):
        self.seen_metadata = []
        self.seen_time_remaining = []

    def service(self, handler_call_details):
        if handler_call_details.method != STREAM:
            return None
        return grpc.stream_stream_rpc_method_handler(self._echo)

    def _echo(self, requests, context):
        self.seen_metadata.append(tuple(context.invocation_metadata()))
        self.seen_time_remaining.append(context.time_remaining())
        for request in requests:
            if request == b"abort":
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to abort")
            yield b"echo:" + request


@pytest.fixture
def backend(tmp_path):
    """A grpc server on a unix socket, as the front door's backend."""
    handler = EchoBackend()
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
    address = f"unix:{tmp_path / 'backend.sock'}"
    server.add_insecure_port(address)
    server.start()
    yield address, handler
    server.stop(0)


def test_other_methods_are_relayed_with_messages_metadata_and_deadline(backend):
    address, echo = backend
    handler, seen = answering()
    with front_door(handler, address) as channel:
        stream = channel.stream_stream(STREAM)
        answers = list(stream(iter([b"a", b"bb", b""]), timeout=9,
                              metadata=[("authorization", "Bearer t"), ("x-blob-bin", b"\x01")]))
    assert answers == [b"echo:a", b"echo:bb", b"echo:"]
    assert seen == []  # the direct handler saw none of it
    (metadata,) = echo.seen_metadata
    assert ("authorization", "Bearer t") in metadata and ("x-blob-bin", b"\x01") in metadata
    # the deadline goes on as a timeout, which gRPC may round up by a few milliseconds
    assert 7 < echo.seen_time_remaining[0] < 9.5


def test_a_relayed_call_ends_with_the_backends_status(backend):
    address, _ = backend
    handler, _ = answering()
    with front_door(handler, address) as channel:
        stream = channel.stream_stream(STREAM)(iter([b"a", b"abort", b"never"]), timeout=5)
        assert next(stream) == b"echo:a"
        with pytest.raises(grpc.RpcError) as aborted:
            next(stream)
    assert aborted.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert aborted.value.details() == "asked to abort"


def test_a_backend_error_reaches_a_client_that_keeps_its_stream_open(backend):
    """The client sent its request and waits, without half-closing: the backend's status must
    still reach it at once (not when the client writes again or gives up)."""
    address, _ = backend
    handler, _ = answering()
    done_waiting = threading.Event()

    def requests():
        yield b"abort"
        done_waiting.wait(10)

    try:
        with front_door(handler, address) as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as aborted:
                next(channel.stream_stream(STREAM)(requests(), timeout=5))
            assert aborted.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert time.monotonic() - started < 2
    finally:
        done_waiting.set()


def test_a_relayed_call_to_a_missing_backend_is_unavailable():
    handler, _ = answering()
    with front_door(handler) as channel, pytest.raises(grpc.RpcError) as unreachable:
        list(channel.stream_stream(STREAM)(iter([b"a"]), timeout=5))
    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_address_in_use_is_refused():
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        handler, _ = answering()
        with pytest.raises(RuntimeError, match="could not bind"):
            _frontdoor.Server(f"127.0.0.1:{port}", handler, [UNARY], "unix:/x", MAX_BYTES)


async def test_the_grpc_aio_backend_listens_only_in_a_private_directory(model_repository):
    settings = Settings(host="127.0.0.1", port=0, model_repository=model_repository,
                        poll_interval=0, transport="native")
    async with running_server(settings) as server:
        front: FrontDoor = server._front_door
        socket_path = front.backend_address.removeprefix("unix:")
        directory = os.path.dirname(socket_path)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    assert not os.path.exists(directory)
