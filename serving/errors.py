"""Domain errors: what went wrong, in terms of the service, not of a transport.

Each class carries its status on both transports (``grpc_code``, a ``grpc.StatusCode`` name,
and ``http_status``): this is the one table of the error contract. The call pipeline turns
anything else raised while answering into ``Internal``, logged with its traceback and shown
to the client without one.
"""

from collections.abc import Callable


class ServingError(Exception):
    """A request the service refuses; the message names the field and what was expected.
    It may quote the request: cut to ``MAX_MESSAGE`` characters, it always fits the status
    (gRPC refuses details over 16 KB, and a 16 KB model name became RESOURCE_EXHAUSTED)."""

    grpc_code, http_status = "INTERNAL", 500

    def __init__(self, message: str = ""):
        super().__init__(message[:MAX_MESSAGE] + ("..." if len(message) > MAX_MESSAGE else ""))


MAX_MESSAGE = 1000


class InvalidArgument(ServingError):  # noqa: N818 (named as the status)
    """The request is malformed: wrong sizes, shapes, types, counts."""

    grpc_code, http_status = "INVALID_ARGUMENT", 400


class UnsupportedMediaType(InvalidArgument):
    """The body comes in a form the endpoint does not read (HTTP: a multipart form where the
    file itself is expected)."""

    http_status = 415


class UnsupportedCoding(UnsupportedMediaType):
    """The body comes in a content coding the server does not decode (HTTP's Content-Encoding;
    gRPC's own compression is gRPC's)."""


class Unimplemented(ServingError):  # noqa: N818 (named as the status)
    """The request needs a part of its protocol the server does not implement (HTTP: a
    transfer coding other than chunked)."""

    grpc_code, http_status = "UNIMPLEMENTED", 501


class NotFound(ServingError):  # noqa: N818 (named as the status)
    """The request names a model or version that is not loaded."""

    grpc_code, http_status = "NOT_FOUND", 404


class Unauthenticated(ServingError):  # noqa: N818 (named as the status)
    """The call lacks the bearer token the server requires."""

    grpc_code, http_status = "UNAUTHENTICATED", 401


class ResourceExhausted(ServingError):  # noqa: N818 (named as the status)
    """The server is overloaded (too many calls at once); retrying later may succeed."""

    grpc_code, http_status = "RESOURCE_EXHAUSTED", 429


class TooLarge(ResourceExhausted):
    """The request is larger than the server accepts."""

    http_status = 413


class Unavailable(ServingError):  # noqa: N818 (named as the status)
    """The server is not ready or is shutting down; retrying elsewhere may succeed."""

    grpc_code, http_status = "UNAVAILABLE", 503


class DeadlineExceeded(ServingError):  # noqa: N818 (named as the status)
    """The call's deadline passed before it was answered, whatever its method."""

    grpc_code, http_status = "DEADLINE_EXCEEDED", 504


class Cancelled(ServingError):  # noqa: N818 (named as the status)
    """The call was cancelled before it was answered: by its client, or by a stop whose
    grace ended."""

    grpc_code, http_status = "CANCELLED", 499


class Internal(ServingError):  # noqa: N818 (named as the status)
    """A bug: the client gets this short message, the log the traceback."""

    def __init__(self):
        super().__init__("internal error while answering; the server log has the details")


def parse_request(parse: Callable, data):
    """``parse(data)``; whatever it raises is the client's fault: InvalidArgument (a parser
    that already names the field keeps its message)."""
    try:
        return parse(data)
    except ServingError:
        raise
    except Exception as error:  # DecodeError, or whatever else a parser makes of hostile bytes
        raise InvalidArgument(f"request: {error}") from None


class ListenError(Exception):
    """The server cannot listen: its address is taken or its TLS files are not usable."""


class RepositoryError(Exception):
    """The model repository cannot be served (missing, empty, tampered or unreadable)."""


class WorkerStartError(Exception):
    """A worker could not start; the message is its reason."""
