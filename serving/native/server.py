"""The native server's Python side: the pool threads that take calls from gRPC C++ and answer
them through the interceptors and generic handlers, as grpcio's synchronous server would
(``serving/native/__init__.py`` says how it is built and why)."""

import collections
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator

import grpc

from serving.native import _server
from serving.native.context import NativeContext
from serving.security import ServerTls

log = logging.getLogger(__name__)


# grpc.HandlerCallDetails, as grpcio makes it
_HandlerCallDetails = collections.namedtuple("_HandlerCallDetails", "method invocation_metadata")


class NativeServer:
    """A ``grpc.Server``-like server on gRPC C++; ``threads``: calls answered at once (a
    stream holds one from its first message to its end, a non-blocking Watch none), of which
    ``max_running`` at work (not waiting on the network; None: all); ``listening``: the
    largest message, whether worker processes share the port (off: a port in use fails) and
    a connection's life in ms. Built only where the extension is
    (``serving.grpc_transport.grpc_server`` asks ``native.available()`` first)."""

    transport = "native"

    def __init__(self, threads: int, interceptors: Iterable[grpc.ServerInterceptor],
                 listening: tuple[int, bool, int], max_running: int | None = None):
        self._core = _server.Server(min(threads, max_running or threads))
        # dead_calls(): a (status code name, method as sent: bytes) pair for each call that
        # died waiting for a call thread since the last time: C++ finished it
        # (DEADLINE_EXCEEDED or CANCELLED) unseen
        self.dead_calls = self._core.dead
        self._listening = listening
        self._pool_size = threads
        self._generic: list[grpc.GenericRpcHandler] = []
        self._resolve = self._lookup
        for interceptor in reversed(list(interceptors)):
            self._resolve = functools.partial(interceptor.intercept_service, self._resolve)
        self._pool: list[threading.Thread] = []
        self._watched: dict[int, NativeContext] = {}  # call id -> context, until it ends
        self._state = threading.Lock()
        self._stopped: threading.Event | None = None  # stop()'s

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers) -> None:
        """grpcio's faster lookup for generated code, which adds the same handlers as a
        generic handler too: served from there."""

    def add_insecure_port(self, address: str) -> int:
        return self._core.listen(address, *self._listening)

    def add_secure_port(self, address: str, tls: ServerTls) -> int:
        return self._core.listen(address, *self._listening,
                                 (tls.cert, tls.key, tls.client_ca or b""))

    def start(self) -> None:
        with self._state:
            if self._pool or self._stopped is not None:
                return
            self._pool = [threading.Thread(target=self._serve, name=f"grpc-call-{index}")
                          for index in range(self._pool_size)]
            for thread in self._pool:
                thread.start()

    def stop(self, grace: float | None) -> threading.Event:
        """Stops listening and cancels the calls still running after ``grace`` seconds; the
        event returned is set once every call has ended and the pool threads are joined (on a
        thread of its own, ``stopping``: gRPC C++'s shutdown waits for each call's handler to
        finish it, and one may never return). Only the first call stops: a later one (the
        drain's stop(0)) gets the same event. (GrpcioServer's stop uses ``stopping`` too.)"""
        self.start()  # calls that arrived before start() must be answered to end
        with self._state:
            if self._stopped is None:  # (joins the started threads: a start() that could not
                # start them all raised)
                self._stopped = stopping(functools.partial(self._core.shutdown, grace or 0.0),
                                         *[thread.join for thread in self._pool if thread.ident])
        return self._stopped

    # The pool threads

    def _serve(self) -> None:
        while (taken := self._core.next_call()) is not None:
            call, new = taken
            if not new:  # a call whose callbacks are due was cancelled (``call``: its id)
                with self._state:
                    context = self._watched.pop(call, None)
                if context is not None:
                    context.end()
                continue
            try:
                self._answer(call)
            except Exception:  # never lose a pool thread
                log.exception("the native server failed to answer a call")
                call.finish(grpc.StatusCode.INTERNAL.value[0], "internal error", ())
                self._watched.pop(call.id(), None)  # its context may never end
            except BaseException:  # SystemExit, KeyboardInterrupt: the call ends first
                call.finish(grpc.StatusCode.UNKNOWN.value[0], "the handler exited", ())
                raise
            # let go of the call before waiting for the next: it holds its request and answer
            # (idle threads kept their last ones: after 3 MB requests, 64 of them held 440 MB)
            del taken, call

    def _watch_end(self, call, context: NativeContext) -> None:
        """If ``call`` is cancelled while parked, next_call() gives it again for its end().
        Its entry goes as it ends, whichever thread ends it: its handler's, the cancellation's
        (above), or another (a Watch ended by the drain's end_watches stayed until the server
        went)."""
        key = call.id()
        with self._state:
            self._watched[key] = context
        if not context.add_callback(functools.partial(self._watched.pop, key, None)):
            self._watched.pop(key, None)  # it ended meanwhile
        call.watch_end()

    def _lookup(self, details: _HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return next((handler for generic in self._generic
                     if (handler := generic.service(details)) is not None), None)

    def _answer(self, call) -> None:
        """Answers ``call`` (a parked one: from other threads, until it ends)."""
        method, metadata, peer, remaining = call.info()
        metadata = tuple(metadata)  # as grpcio gives it
        context = NativeContext(call, metadata, peer, remaining,
                                functools.partial(self._watch_end, call))
        try:
            handler = self._resolve(_HandlerCallDetails(method, metadata))
            if handler is None:
                raise _RefusedError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            _run(call, context, handler, method)
        except _RefusedError as refusal:  # its request could not be read, or no such method
            if context.code() is None:
                context.set_code(refusal.code)
                context.set_details(str(refusal))
            context.finish()
        except Exception as error:
            context.finish(error=error)


def stopping(*steps: Callable[[], object]) -> threading.Event:
    """An event set once ``steps`` have run in turn on a thread of their own: a server's stop
    (this one's, GrpcioServer's), whose wait for its call threads the caller bounds (a handler
    may never return); on the caller's thread if no thread can be had (the start that failed
    for want of threads stops its server so, and a stop left undone held the process)."""
    stopped = threading.Event()

    def in_turn() -> None:
        for step in (*steps, stopped.set):
            step()

    try:
        threading.Thread(target=in_turn, name="grpc-stop", daemon=True).start()
    except RuntimeError:  # can't start new thread
        in_turn()
    return stopped


def _run(call, context: NativeContext, handler: grpc.RpcMethodHandler, method: str) -> None:
    """Runs the handler, as grpcio does for its kind."""
    request = (_requests(call, handler.request_deserializer) if handler.request_streaming
               else _request(call, handler.request_deserializer, method))
    serialize = handler.response_serializer or (lambda data: data)
    behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                or handler.stream_stream)
    if not handler.response_streaming:
        context.finish(serialize(behavior(request, context)))
    elif getattr(behavior, "experimental_non_blocking", False) and not handler.request_streaming:
        behavior(request, context, functools.partial(_send, call, context, serialize))
        if not (call.park() and call.active()):  # parked: answered from other threads
            context.end()  # cancelled already (and finished by park), or ended by the handler
    else:
        _write_all(call, behavior(request, context), serialize)
        context.finish()


def _send(call, context: NativeContext, serialize, message) -> None:
    """A non-blocking handler's ``send_response_callback``: None ends the call, as in grpcio
    (grpc_health's Watch does so once cancelled)."""
    if message is None:
        context.finish()
    else:
        call.write(serialize(message))


class _RefusedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code


def _parse(data: bytes, deserializer):
    if deserializer is None:
        return data
    try:
        return deserializer(data)
    except Exception:
        raise _RefusedError(grpc.StatusCode.INTERNAL, "Exception deserializing request!") from None


def _read(call) -> bytes | None:
    try:
        return call.read()
    except ValueError as error:  # unreadable bytes are refused, never parsed as empty
        raise _RefusedError(grpc.StatusCode.INTERNAL, str(error)) from None


def _request(call, deserializer, method: str):
    data = _read(call)
    if data is None:  # as grpcio answers it
        raise _RefusedError(grpc.StatusCode.UNIMPLEMENTED,
                            f'"{method}" requires exactly one request message.')
    return _parse(data, deserializer)


def _requests(call, deserializer) -> Iterator:
    while (data := _read(call)) is not None:
        yield _parse(data, deserializer)


def _write_all(call, responses: Iterator, serialize) -> None:
    """Writes each response; stops, closing the iterator, once the client is gone."""
    try:
        for response in responses:
            if not call.write(serialize(response)):
                break
    finally:
        getattr(responses, "close", lambda: None)()
