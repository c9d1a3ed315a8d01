"""Admission of calls, for every servicer present and future (a server interceptor):

- once the server drains, new calls get UNAVAILABLE while calls in flight go on; health and
  reflection keep answering (health then says NOT_SERVING);
- it counts the calls in flight, so that shutdown can say what it waits for;
- a request message that cannot be parsed gets INVALID_ARGUMENT, where grpc.aio alone would
  answer UNKNOWN.
"""

import logging

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
DRAINING_MESSAGE = "server is shutting down; retry on another replica"

log = logging.getLogger(__name__)


class Admission(grpc.aio.ServerInterceptor):
    def __init__(self, max_in_flight: int = 0):
        """``max_in_flight``: calls served at once (0: no limit); more get RESOURCE_EXHAUSTED
        at once rather than queueing without bound."""
        self.max_in_flight = max_in_flight
        self.accepting = True
        self.in_flight = 0
        self.refused = 0  # calls refused while draining: shutdown waits until they stop coming

    def close(self) -> None:
        """From now on, new calls get UNAVAILABLE; calls in flight go on."""
        self.accepting = False

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if not self.accepting:
            self.refused += 1
            return _replace(handler, _refuse(handler_call_details.method))
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return _replace(handler, _overloaded(self.max_in_flight))
        return _replace(handler, self._admitted(handler), _tolerant(handler.request_deserializer))

    def _admitted(self, handler):
        """The handler's behavior, counted in ``in_flight`` and fed only parsed requests."""
        behavior = getattr(handler, _kind(handler))
        parsed = _parsed_stream if handler.request_streaming else _parsed

        if handler.response_streaming:

            async def streaming(request, context):
                self.in_flight += 1
                try:
                    async for response in behavior(await parsed(request, context), context):
                        yield response
                finally:
                    self.in_flight -= 1

            return streaming

        async def unary(request, context):
            self.in_flight += 1
            try:
                return await behavior(await parsed(request, context), context)
            finally:
                self.in_flight -= 1

        return unary


class _Unparsable:
    """Stands for a request message the deserializer refused."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as error:  # protobuf's DecodeError, or anything a custom one raises
            return _Unparsable(error)

    return deserialize


async def _parsed(request, context):
    if isinstance(request, _Unparsable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {request.error}")
    return request


async def _parsed_stream(requests, context):
    async def checked():
        async for request in requests:
            yield await _parsed(request, context)

    return checked()


def _refuse(method: str):
    async def refuse(request, context):
        log.info("call refused while draining", extra={"fields": {"method": method}})
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)

    return refuse


def _overloaded(limit: int):
    async def refuse(request, context):
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server overloaded: {limit} calls in flight (--max-concurrent-calls); "
            "retry with backoff or on another replica",
        )

    return refuse


def _kind(handler) -> str:
    requests = "stream" if handler.request_streaming else "unary"
    return f"{requests}_{'stream' if handler.response_streaming else 'unary'}"


def _replace(handler, behavior, request_deserializer=None):
    changes = {_kind(handler): behavior}
    if request_deserializer is not None:
        changes["request_deserializer"] = request_deserializer
    return handler._replace(**changes)
