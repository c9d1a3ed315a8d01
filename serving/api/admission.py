"""Admission of calls, for every servicer present and future (a server interceptor):

- once the server drains, new calls get UNAVAILABLE while calls in flight go on; health and
  reflection keep answering (health then says NOT_SERVING);
- it counts the calls in flight, so that shutdown can say what it waits for, and refuses calls
  over the configured limit with RESOURCE_EXHAUSTED.

``MalformedRequestInterceptor`` answers INVALID_ARGUMENT to request bytes that do not parse, on
every method, where grpc.aio alone would answer UNKNOWN.
"""

import inspect
import logging
import threading

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
DRAINING_MESSAGE = "server is shutting down; retry on another replica"
HANDLER_CACHE_LIMIT = 256  # wrapped handlers kept per interceptor (one per method in practice)

log = logging.getLogger(__name__)


class Admission(grpc.aio.ServerInterceptor):
    def __init__(self, max_in_flight: int = 0):
        """``max_in_flight``: calls served at once (0: no limit); more get RESOURCE_EXHAUSTED
        at once rather than queueing without bound."""
        self.max_in_flight = max_in_flight
        self.accepting = True
        self.in_flight = 0
        self.refused = 0  # calls refused while draining: shutdown waits until they stop coming
        # the front door runs calls on its own threads too: the counts change under this lock
        self._counting = threading.Lock()
        self._admitted_handlers: dict = {}  # handler -> it, counted

    def close(self) -> None:
        """From now on, new calls get UNAVAILABLE; calls in flight go on."""
        self.accepting = False

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if not self.accepting:
            with self._counting:
                self.refused += 1
            return _replace(handler, _refuse(handler_call_details.method))
        return _built_once(self._admitted_handlers, handler,
                           lambda: _replace(handler, self._admitted(handler)))

    def _enter(self) -> bool:
        """Counts a call in, unless that would pass the limit: one step under the lock, so
        that calls starting together on several threads cannot all pass a check made
        before any of them is counted."""
        with self._counting:
            if self.max_in_flight and self.in_flight >= self.max_in_flight:
                return False
            self.in_flight += 1
            return True

    def _leave(self) -> None:
        with self._counting:
            self.in_flight -= 1

    def _admitted(self, handler):
        """The handler's behavior, counted in ``in_flight`` and refused over the limit."""
        behavior = getattr(handler, _kind(handler))

        if handler.response_streaming:

            async def streaming(request, context):
                if not self._enter():
                    await _overloaded(context, self.max_in_flight)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    self._leave()

            return streaming

        async def unary(request, context):
            if not self._enter():
                await _overloaded(context, self.max_in_flight)
            try:
                return await behavior(request, context)
            finally:
                self._leave()

        return unary


async def _parse(data: bytes, parse, context: grpc.aio.ServicerContext):
    try:
        return parse(data)
    except Exception as error:  # DecodeError, or whatever else a parser makes of hostile bytes
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {error}")


async def _parsed_stream(raw_requests, parse, context: grpc.aio.ServicerContext):
    async for data in raw_requests:
        yield await _parse(data, parse, context)


def _parsing_behavior(behavior, parse, handler):
    """``behavior`` fed with requests parsed from raw bytes, refusing those that do not parse."""

    async def requests(raw, context):
        if handler.request_streaming:
            return _parsed_stream(raw, parse, context)
        return await _parse(raw, parse, context)

    if inspect.isasyncgenfunction(behavior):  # not health's Watch, which uses context.write

        async def streaming(raw, context):
            async for response in behavior(await requests(raw, context), context):
                yield response

        return streaming

    async def unary(raw, context):
        return await behavior(await requests(raw, context), context)

    return unary


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT to request bytes that are not a valid message of the method.

    Left to itself grpc.aio answers such a request UNKNOWN with the parser's exception text; the
    error contract promises a client error for bad input, whatever the bytes.
    """

    def __init__(self):
        self._parsing_handlers: dict = {}  # handler -> it, parsing its own requests

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _built_once(self._parsing_handlers, handler, lambda: handler._replace(
            request_deserializer=None,
            **{_kind(handler): _parsing_behavior(
                getattr(handler, _kind(handler)), handler.request_deserializer, handler)},
        ))


def _built_once(cache: dict, handler, build):
    """``build()`` for ``handler``, made once: a server passes the same handler objects call
    after call (were that ever not so, the cache is emptied rather than left to grow)."""
    built = cache.get(handler)
    if built is None:
        if len(cache) >= HANDLER_CACHE_LIMIT:
            cache.clear()
        built = cache[handler] = build()
    return built


def _refuse(method: str):
    async def refuse(request, context):
        log.info("call refused while draining", extra={"fields": {"method": method}})
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)

    return refuse


async def _overloaded(context, limit: int):
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"server overloaded: {limit} calls in flight (--max-concurrent-calls); "
        "retry with backoff or on another replica",
    )


def _kind(handler) -> str:
    requests = "stream" if handler.request_streaming else "unary"
    return f"{requests}_{'stream' if handler.response_streaming else 'unary'}"


def _replace(handler, behavior):
    return handler._replace(**{_kind(handler): behavior})
