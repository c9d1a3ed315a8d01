"""The one mapping from domain errors to gRPC status codes, as a decorator for servicer methods.

An error the service raises on purpose ends the call with its status code and message (and one
log line); anything else is a bug: it is logged with its traceback, and the client gets
INTERNAL with a short message and no traceback.
"""

import functools
import inspect
import logging

import grpc

from serving.errors import InvalidArgument, NotFound, ResourceExhausted, ServingError, Unavailable

STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
INTERNAL_MESSAGE = "internal error while answering; the server log has the details"

log = logging.getLogger(__name__)


def status_code(error: ServingError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


def handle_errors(method):
    """Wraps an async servicer method (coroutine or async generator) so that every error ends
    the call with the right status code."""
    name = method.__qualname__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self, request, context):
            try:
                async for response in method(self, request, context):
                    yield response
            except Exception as error:
                await _abort(context, name, error)

        return streaming

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as error:
            await _abort(context, name, error)

    return unary


async def _abort(context: grpc.aio.ServicerContext, method: str, error: Exception):
    if isinstance(error, grpc.aio.AbortError):  # the method aborted by itself
        raise error
    if isinstance(error, ServingError):
        code, message = status_code(error), str(error)
        log.warning(
            "request failed",
            extra={"fields": {"method": method, "code": code.name, "error": message,
                              "peer": context.peer()}},
        )
    else:
        code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        log.error("request crashed", exc_info=error,
                  extra={"fields": {"method": method, "peer": context.peer()}})
    await context.abort(code, message)
