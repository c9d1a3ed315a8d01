"""The gRPC transport: grpcio's synchronous server programming model (its own server, or the
native one, ``serving.native``, behind the same interface), translating calls for the call
pipeline.

It decides nothing. ``PipelineInterceptor`` (a ``grpc.ServerInterceptor``) puts every method
of every service through ``CallPipeline`` but health's, which the pipeline leaves alone
(``CallPipeline.guards``; its request bytes are parsed all the same): it describes the call as
a ``Call``, lets the pipeline parse the request bytes (bytes that do not parse are
INVALID_ARGUMENT, where grpcio would answer INTERNAL), and turns a ``ServingError`` into the
status its class names. The data plane's methods (``serving.api``) are registered as they are,
called with the ``Call``; health and reflection come from their packages, called with their
``ServicerContext``.
"""

import collections
import functools
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from types import SimpleNamespace

import grpc
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health, health_pb2

from serving import native
from serving.errors import ServingError, parse_request
from serving.native.server import NativeServer, stopping
from serving.pipeline import Call, CallPipeline
from serving.security import ServerTls

log = logging.getLogger(__name__)
# health Watches open at once in a process (~15 KB each; no token guards them), and their sends
# queued behind a client that reads nothing
MAX_WATCHES = 10_000


class AnsweredByHandler(ServingError):  # noqa: N818 (a status already set, not an error kind)
    """A package's handler (not the data plane's) ended its call with a status of its own,
    which the metrics and the log say."""

    def __init__(self, code: grpc.StatusCode):
        super().__init__(f"answered {code.name}")
        self.grpc_code = code.name


def api_handler(service: descriptor.ServiceDescriptor, api: object) -> grpc.GenericRpcHandler:
    """Serves ``service`` with the methods of the same names of ``api`` (the data plane),
    each ``(request or request iterator, Call) -> response or response iterator``."""
    return grpc.method_handlers_generic_handler(service.full_name, {
        method.name: getattr(grpc, f"{_kind(method.client_streaming, method.server_streaming)}"
                             "_rpc_method_handler")(
            getattr(api, method.name),
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=message_factory.GetMessageClass(
                method.output_type).SerializeToString)
        for method in service.methods})


class PipelineInterceptor(grpc.ServerInterceptor):
    def __init__(self, pipeline: CallPipeline, api_services: Iterable[str]):
        """``api_services``: the services whose handlers are data plane methods."""
        self._pipeline = pipeline
        self._api_services = frozenset(api_services)
        self._wrapped: dict[tuple[str, object], grpc.RpcMethodHandler] = {}

    def intercept_service(self, continuation, handler_call_details):
        if (handler := continuation(handler_call_details)) is None:
            return None
        method = handler_call_details.method
        wrapped = self._wrapped.get((method, handler))
        if wrapped is None:  # once per method: the server passes the same handlers each call
            wrapped = self._wrapped[method, handler] = (
                self._wrap(method, handler) if self._pipeline.guards(method)
                else _parsing_only(handler))
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = _kind(handler.request_streaming, handler.response_streaming)
        behavior = getattr(handler, kind)
        streams = handler.response_streaming
        is_api = method.strip("/").partition("/")[0] in self._api_services
        run = self._pipeline.stream if streams else self._pipeline.unary
        # a package's handler (reflection) gets the grpc context and may end the call itself:
        # context.abort's bare Exception becomes AnsweredByHandler, logged and counted under
        # the code it set, not as a crash
        foreign = _catching(behavior, streams, Exception, _raise_answered)

        def through_pipeline(data, context):
            answer = behavior if is_api else lambda request, _call: foreign(request, context)
            return run(_call(method, context), answer, data, handler.request_deserializer)

        # the pipeline's verdict, a ServingError, becomes the call's status; the pipeline parses
        # the bytes itself (no deserializer), once the call is admitted
        answer = _catching(through_pipeline, streams, ServingError, _abort)
        return handler._replace(request_deserializer=None, **{kind: answer})


def _parsing_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """Health's unary handlers, which the pipeline leaves alone, reading request bytes: those that
    do not parse are INVALID_ARGUMENT. Watch stays non-blocking (no thread while it waits)."""
    parse, behavior = handler.request_deserializer, handler.unary_unary or handler.unary_stream

    def answer(data, context, *callback):
        try:
            request = parse_request(parse, data)
        except ServingError as error:
            _abort(error, data, context)
        return behavior(request, context, *callback)

    answer.__dict__.update(behavior.__dict__)  # grpc's marks: experimental_non_blocking ...
    return handler._replace(request_deserializer=None,
                            **{_kind(False, handler.response_streaming): answer})


def _kind(request_streaming: bool, response_streaming: bool) -> str:
    """A handler's kind, as grpc names its behavior: "unary_unary" ... "stream_stream"."""
    return "_".join("stream" if streams else "unary"
                    for streams in (request_streaming, response_streaming))


def _catching(behavior, streams: bool, errors: type[Exception], on_error):
    """``behavior(request, context)``, wrapped: an error of ``errors`` that it raises (while
    its responses stream too, if ``streams``: then it is a generator) goes to ``on_error(error,
    request, context)``, which raises what the call ends with."""
    if streams:
        def stream(request, context):
            try:
                yield from behavior(request, context)
            except errors as error:
                on_error(error, request, context)
        return stream

    def unary(request, context):
        try:
            return behavior(request, context)
        except errors as error:
            on_error(error, request, context)
    return unary


def _raise_answered(error: Exception, _request, context: grpc.ServicerContext):
    """A package's handler raised: if it ended its call itself first (``context.abort`` raises
    a bare Exception), that status stands."""
    code = context.code()
    raise (error if code is None else AnsweredByHandler(code)) from None


def _call(method: str, context: grpc.ServicerContext) -> Call:
    authorization = next((value for key, value in context.invocation_metadata() or ()
                          if key == "authorization"), "")
    if isinstance(authorization, bytes):
        authorization = authorization.decode(errors="replace")
    remaining = context.time_remaining()
    return Call(method, authorization, context.peer(),
                None if remaining is None else time.monotonic() + remaining, context.is_active)


def _abort(error: ServingError, _request, context: grpc.ServicerContext):
    """Ends the call with ``error``'s status, unless the handler set its own. (It takes the
    request, unused, as every ``on_error`` of ``_catching`` does.)"""
    if context.code() is not None:  # the handler set its own status: abort() would replace its
        raise error  # details; either server answers with the code set (not UNKNOWN)
    context.abort(grpc.StatusCode[error.grpc_code], str(error))


class _DrainRefusedStreams(grpc.ServerInterceptor):
    """grpcio only (gRPC C++ does it in ``Call::Complete``): before a call whose client still
    streams requests ends with an error, reads them for 50 ms at most (on a helper thread: a
    read cannot time out), so that the status does not overtake the client's writes, which
    grpc.aio clients report as INTERNAL ("Internal error from Core") instead of the status."""

    def intercept_service(self, continuation, handler_call_details):
        if (handler := continuation(handler_call_details)) is None or not handler.request_streaming:
            return handler
        kind, streams = _kind(True, handler.response_streaming), handler.response_streaming
        return handler._replace(**{kind: _catching(getattr(handler, kind), streams, Exception,
                                                   self._drain)})

    @staticmethod
    def _drain(error: Exception, requests, context: grpc.ServicerContext):
        if context.is_active():  # (cancelled: nothing comes, and a read would raise)
            reader = threading.Thread(target=collections.deque, args=(requests, 0), daemon=True)
            reader.start()
            reader.join(0.05)
        raise error


class HealthServicer(health.HealthServicer):
    """grpc_health's, non-blocking (a Watch holds no call thread), its Watches' answers and ends
    sent in order by one thread of its own (``sends``, shut down by the server's stop), never
    under the servicer's lock nor on the caller's thread: grpc_health sent them under that lock,
    where one client that lets no byte of its Watch in held every Check, the drain's status
    change and, on grpcio's polling thread, a Watch's end (upstream: one client opening and
    cancelling Watches deadlocked grpcio's server for good). Such a client still holds up the
    Watch answers after its own, every other client's (a write has no time limit), until it goes
    or the stop cancels it. A Watch of a service it does not serve ends after SERVICE_UNKNOWN,
    never registered: grpc_health kept every name any client asked for, for good (and health
    needs no token). At most MAX_WATCHES are open at once, or their sends queued; past them a
    Watch is refused RESOURCE_EXHAUSTED (Check always answers)."""

    def __init__(self):
        super().__init__()
        self.sends = ThreadPoolExecutor(1, thread_name_prefix="health-send")
        self.sends.submit(int)  # its thread now: a start out of threads drains by it too

    _ending = False

    def end_watches(self) -> None:
        """Ends the open Watches (OK), and any opened later once answered, as a server going
        away does: each would hold a stop that lets the calls in flight finish. Returns once
        the ends are sent (grpcio's stop cancelled those still queued), 1 s at most (a client
        that reads nothing holds up the sender)."""
        with self._lock:  # (queued, not sent: sends never wait under the lock)
            self._ending = True
            for send in [one for sends in self._send_response_callbacks.values() for one in sends]:
                send(None)
        wait([self.sends.submit(int)], 1.0)

    def Watch(self, request, context, send_response_callback):  # noqa: N802 (grpc_health's)
        send_response_callback = functools.partial(self.sends.submit, send_response_callback)
        with self._lock:  # end_watches ends the Watches registered before it, this the later
            # the open ones, and the sends queued behind a client that reads nothing: each
            # Watch opened and closed meanwhile left two there, for as long as that client stays
            if (sum(map(len, self._send_response_callbacks.values())) >= MAX_WATCHES
                    or self.sends._work_queue.qsize() >= MAX_WATCHES):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_WATCHES} health Watches "
                              "open or queued, the most a process keeps; use Check, or retry later")
            if request.service in self._server_status:
                # grpc_health's Watch uses its context only to add the end, and drops
                # add_callback's False: a call that ended before its Watch was registered (on
                # grpcio, one cancelled as its first answer reached the client) stayed
                # registered until the stop; its end runs now
                ender = SimpleNamespace(add_callback=lambda end: context.add_callback(end) or end())
                super().Watch(request, ender, send_response_callback)
                if self._ending:  # (queued after its answer: sends never wait under the lock)
                    send_response_callback(None)
            else:  # SERVICE_UNKNOWN, then the end: no service is added later
                send_response_callback(health_pb2.HealthCheckResponse(status="SERVICE_UNKNOWN"))
                send_response_callback(None)

    def List(self, request, context):  # noqa: N802 (grpc's); grpcio-health-checking 1.85 has
        with self._lock:  # no List: it answered UNIMPLEMENTED, reflection describing it
            return health_pb2.HealthListResponse(statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()})


class GrpcioServer:
    """grpcio's own ``grpc.server()``, with the native server's ``add_secure_port`` and ``stop``."""

    transport = "grpcio"

    def __init__(self, threads: int, **options):
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="grpc-call")
        self._server = grpc.server(self._executor, **options)

    def dead_calls(self) -> list[tuple[str, bytes]]:
        """None: grpcio drops a call that died waiting for a call thread before any handler or
        interceptor of ours runs, so none is known and no metric counts it on this server (the
        native server lists them: ``NativeServer.dead_calls``)."""
        return []

    def add_secure_port(self, address: str, tls: ServerTls) -> int:
        return self._server.add_secure_port(address, grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], tls.client_ca, require_client_auth=tls.client_ca is not None))

    def stop(self, grace: float | None) -> threading.Event:
        """grpcio's stop, whose event is set once gRPC has ended every call, a handler maybe still
        at work (on a call the grace cut): this one's once the call threads are done too."""
        return stopping(self._server.stop(grace).wait, self._executor.shutdown)

    def __getattr__(self, name: str):  # the rest of grpc.Server's interface, as it is
        return getattr(self._server, name)


def grpc_server(implementation: str, threads: int,
                interceptors: Iterable[grpc.ServerInterceptor], max_message_bytes: int,
                reuse_port: bool, *, max_running: int | None = None, connection_age_s: float = 0
                ) -> GrpcioServer | NativeServer:
    """The gRPC server: ``implementation`` "native" (gRPC C++, ``serving.native``) where it is
    built, else grpcio's synchronous server; the same interface either way (``transport``
    names it; ``add_secure_port(address, ServerTls)``). ``threads``: calls answered at once
    (a stream holds one until it ends); ``max_running``: of which at work at once,
    the native server's (None: all); ``reuse_port``: several worker processes share
    the port; ``connection_age_s``: a connection's life, 0 forever."""
    age_ms = round(connection_age_s * 1000) if connection_age_s else 2**31 - 1
    if implementation == "native":
        if native.available():
            return NativeServer(threads, interceptors, (max_message_bytes, reuse_port, age_ms),
                                max_running)
        log.warning("grpcio serves: the native gRPC server is %s", native.UNAVAILABLE_REASON)
    return GrpcioServer(
        threads, interceptors=[_DrainRefusedStreams(), *interceptors],
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 ("grpc.max_metadata_size", 16 * 1024),  # as the native server
                 ("grpc.so_reuseport", int(reuse_port)), ("grpc.max_connection_age_ms", age_ms)])
