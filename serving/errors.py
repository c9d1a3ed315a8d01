"""Domain errors: what went wrong, in terms of the service, not of a transport.

The transports (``serving.api``) map each class to a status code in one place; anything else
raised while answering a request is a bug and is reported as such, without a traceback.
"""


class ServingError(Exception):
    """A request the service refuses; the message names the field and what was expected."""


class InvalidArgument(ServingError):  # noqa: N818 (named as the status)
    """The request is malformed: wrong sizes, shapes, types, counts."""


class NotFound(ServingError):  # noqa: N818 (named as the status)
    """The request names a model or version that is not loaded."""


class Unavailable(ServingError):  # noqa: N818 (named as the status)
    """The server is not ready or is shutting down; retrying elsewhere may succeed."""


class ResourceExhausted(ServingError):  # noqa: N818 (named as the status)
    """The server is overloaded (queue full); retrying later may succeed."""


class RepositoryError(Exception):
    """The model repository cannot be served (missing, empty, tampered or unreadable)."""
