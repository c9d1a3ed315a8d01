"""A raw-bytes echo service (``test.Echo``: a method of every kind) whose handlers report what
they see of their context, and ``started``, a server serving handlers on a free loopback port,
for tests/test_native_server.py, tests/test_native_server_threads.py and tests/test_deadlines.py."""

import threading
from typing import NamedTuple

import grpc

SERVICE = "test.Echo"


def started(server, *handlers: grpc.GenericRpcHandler) -> int:
    """``server`` with ``handlers`` added, listening on a free loopback port and started;
    returns the port."""
    server.add_generic_rpc_handlers(list(handlers))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return port


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
        self.holding, self.release = threading.Event(), threading.Event()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"bad initial metadata":  # gRPC C++ aborted the process on these
            context.send_initial_metadata((("Upper-Case", "x"),))
        context.send_initial_metadata((("initial", "yes"),))
        if request == b"hold":  # its thread stays at work (not waiting on the network)
            self.holding.set()
            self.release.wait(10)
        if request == b"bad trailing metadata":
            context.set_trailing_metadata((("text", "line\nbreak"),))
            return b"never sent"
        context.set_trailing_metadata((("trailing", "yes"), ("bin-bin", b"\x00\xff")))
        metadata = dict(context.invocation_metadata())
        if request == b"fail":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details("as asked")
            return b""
        if request == b"empty":  # a message of 0 bytes, OK
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
