"""The native front door (``--transport native``): gRPC C++ listens on the public address.

Why: grpc.aio spends 0.3-0.4 ms of CPU per call in Python before any servicer code runs (the
"gRPC floor" of BENCHMARKS.md), more than the model itself at small batches. The C++ server
(``serving/native/frontdoor.cc``) takes that cost out of Python:

- unary calls of the served APIs go straight to ``DirectCalls``, which runs them on the gRPC
  thread that received them, through the *same* interceptors (token, admission, malformed
  bytes) and servicer methods that grpc.aio would, and answers with the status code they chose;
- every other call (``ClassifyStream``, health, reflection) is relayed to the grpc.aio server,
  which then listens only on a unix socket in a private directory.

A worker under a supervisor that deals out connections (``serving.workers``) does not listen:
it serves each connection handed to it (``serve_handed_connections``).
"""

import asyncio
import collections
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from serving.api.errors import INTERNAL_MESSAGE
from serving.scratch import scratch_parent
from serving.security import ServerTls
from serving.threadtasks import ThreadTask, run_here

log = logging.getLogger(__name__)



class _HandlerCallDetails(
    collections.namedtuple("_HandlerCallDetails", ("method", "invocation_metadata")),
    grpc.HandlerCallDetails,
):
    """What server interceptors get to look at, as grpc.aio builds it."""


class HandlerTable:
    """Collects the method handlers that the generated ``add_*_to_server`` functions register,
    so that grpc.aio and the direct path serve the very same handlers."""

    def __init__(self):
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: list[tuple[str, dict[str, grpc.RpcMethodHandler]]] = []
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self._registered.append((service, handlers))
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler

    def add_to(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(tuple(self._generic))
        for service, handlers in self._registered:
            server.add_registered_method_handlers(service, handlers)

    def unary_methods(self) -> list[str]:
        return [method for method, handler in self.handlers.items()
                if not handler.request_streaming and not handler.response_streaming]


class DirectContext:
    """The part of ``grpc.aio.ServicerContext`` that the interceptors and servicers use, and
    ``time_remaining``, so that a servicer may honour its deadline on either transport."""

    def __init__(self, peer: str, metadata: tuple, deadline: float | None):
        self._peer = peer
        self._metadata = metadata
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        self._code, self._details = code, details
        raise grpc.aio.AbortError(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.time())


class DirectCalls:
    """The front door's handler for unary calls, run on the gRPC C++ thread that received one.

    The call goes through the same interceptors and servicer methods that grpc.aio would run,
    and their coroutine is driven right here (``serving.threadtasks``), with no hand-off to the
    event loop and back: it runs to its answer, or until it waits for the model, and then the
    thread that runs its batch resumes it. If the call ends first (client gone, deadline
    passed), the front door calls the returned ``cancel``, and a request still queued for the
    model leaves the queue.
    """

    def __init__(self, table: HandlerTable, interceptors: Sequence[grpc.aio.ServerInterceptor],
                 peers: Mapping[str, str]):
        self._handlers = table.handlers
        self._interceptors = tuple(interceptors)
        self._peers = peers  # gRPC's name of a handed-over connection -> the client's address

    def __call__(self, method: str, request: bytes, metadata: tuple, peer: str,  # noqa: PLR0917 (the front door's call)
                 deadline: float | None, completion: Callable) -> Callable[[], None]:
        context = DirectContext(self._peers.get(peer, peer), metadata, deadline)
        task = ThreadTask(self._serve(method, request, context, completion))
        run_here(task.step)
        return task.cancel

    async def _serve(self, method: str, request: bytes, context: DirectContext,
                     completion: Callable) -> None:
        try:
            details = _HandlerCallDetails(method, context.invocation_metadata())
            handler = await self._intercept(0, details)
            if handler.request_deserializer is not None:
                request = handler.request_deserializer(request)
            response = await handler.unary_unary(request, context)
            if handler.response_serializer is not None:
                response = handler.response_serializer(response)
            completion(0, "", response)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            completion(code.value[0], context.details())
        except asyncio.CancelledError:
            completion(grpc.StatusCode.CANCELLED.value[0], "the call was cancelled")
        except Exception:
            log.exception("direct call crashed", extra={"fields": {"method": method}})
            completion(grpc.StatusCode.INTERNAL.value[0], INTERNAL_MESSAGE)

    async def _intercept(self, index: int, details: _HandlerCallDetails):
        """The interceptors in grpc.aio's order, the first one outermost."""
        if index == len(self._interceptors):
            return self._handlers[details.method]
        return await self._interceptors[index].intercept_service(
            lambda next_details: self._intercept(index + 1, next_details), details
        )


class FrontDoor:
    """Owns the native server and the private directory of the grpc.aio server's socket."""

    def __init__(self):
        self._directory: str | None = None
        self.backend_address = ""
        self._server: Any = None
        # gRPC names a handed-over connection "fd:N"; calls report the client's address
        self.peers: dict[str, str] = {}
        self._handed: socket.socket | None = None
        self._adopting: threading.Thread | None = None

    def open_backend(self) -> str:
        """A fresh private directory (mode 0700) and the grpc.aio server's address in it."""
        self._directory = tempfile.mkdtemp(prefix="fmnist-grpc-", dir=scratch_parent())
        self.backend_address = f"unix:{os.path.join(self._directory, 'grpc.sock')}"
        return self.backend_address

    def start(self, address: str | None, calls: DirectCalls, unary_methods: list[str],
              max_message_bytes: int, tls: ServerTls | None) -> int:
        """Listens on ``address`` (RuntimeError if it cannot) and returns the port; with
        ``address`` None it listens nowhere and returns 0."""
        try:
            from serving.native import _frontdoor
        except ImportError as error:
            raise RuntimeError(
                f"the native front door is not built ({error}): install g++, pkg-config and "
                "libgrpc++-dev, then reinstall the package; or use --transport grpcio"
            ) from None

        self._server = _frontdoor.Server(
            address, calls, unary_methods, self.backend_address, max_message_bytes,
            None if tls is None else (tls.key, tls.cert, tls.client_ca),
        )
        return self._server.port

    def serve_handed_connections(self, handed: socket.socket) -> None:
        """Serves every connection the supervisor hands over ``handed`` (one descriptor per
        message), on a thread of its own, until ``stop`` or the supervisor closes it."""
        self._handed = handed
        self._adopting = threading.Thread(target=self._adopt_handed, args=(handed,),
                                          name="handed-connections", daemon=True)
        self._adopting.start()

    def _adopt_handed(self, handed: socket.socket) -> None:
        while True:
            try:
                _message, descriptors, _flags, _address = socket.recv_fds(handed, 1, 1)
            except OSError:
                return
            if not descriptors:  # closed: stop() or the supervisor is gone
                return
            for descriptor in descriptors:
                connection = socket.socket(fileno=descriptor)
                try:
                    peer = _peer_name(connection)
                except OSError:  # the client has gone already
                    connection.close()
                    continue
                connection.setblocking(False)
                self.peers[f"fd:{descriptor}"] = peer
                server = self._server
                if server is None:  # stopped meanwhile
                    connection.close()
                    return
                try:
                    server.adopt(connection.detach())
                except RuntimeError:  # shut down meanwhile; it closed the connection
                    return

    async def stop(self) -> None:
        """Stops listening, cancels what is left and waits for it (off the event loop, which
        must keep running to answer the calls that end)."""
        if self._handed is not None:  # no connection is adopted once the server stops
            self._handed.shutdown(socket.SHUT_RDWR)
            await asyncio.get_running_loop().run_in_executor(None, self._adopting.join)
            self._handed.close()
            self._handed = None
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.get_running_loop().run_in_executor(None, server.shutdown, 0)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


def _peer_name(connection: socket.socket) -> str:
    """The client's address as gRPC writes a peer: ipv4:1.2.3.4:5 or ipv6:[::1]:5."""
    host, port = connection.getpeername()[:2]
    if connection.family == socket.AF_INET6 and host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")  # an IPv4 client on a dual-stack socket
    if ":" in host:
        return f"ipv6:[{host}]:{port}"
    return f"ipv4:{host}:{port}"
