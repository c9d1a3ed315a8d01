"""The Python API's one exception for a call the server (or gRPC) failed, as tritonclient has
InferenceServerException: gRPC's own printed five lines with its debug string."""

import contextlib
from collections.abc import Iterator

import grpc


class ClassifierError(grpc.RpcError):
    """A failed call: ``code()`` its grpc.StatusCode, ``details()`` the server's words, and
    ``str()`` one line, ``CODE: details``. A grpc.RpcError, so ``except grpc.RpcError`` still
    catches it."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __reduce__(self):
        """Pickled (a worker process's error, to its parent) as its fields: unpickling called
        ``__init__`` with the message alone, a TypeError."""
        return _rebuilt, (type(self), self._code, self._details)


def _rebuilt(kind: type[ClassifierError], code: grpc.StatusCode, details: str) -> ClassifierError:
    """A pickled ClassifierError (or subclass, whatever its ``__init__`` takes) again."""
    error = Exception.__new__(kind)
    ClassifierError.__init__(error, code, details)
    return error


class NoAnswer(ClassifierError):  # noqa: N818 (its name before it was a ClassifierError)
    """DEADLINE_EXCEEDED: a stream's next answer did not come within the client's timeout."""

    def __init__(self, seconds: float):
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"no answer in {seconds:g} s (the timeout per answer)")


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """Raises a gRPC error of the calls within as a ClassifierError (without gRPC's as its
    cause: a notebook showed both)."""
    try:
        yield
    except ClassifierError:
        raise
    except grpc.RpcError as error:
        raise ClassifierError(error.code(), error.details() or "the server gave no details"
                              ) from None
