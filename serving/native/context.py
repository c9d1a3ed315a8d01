"""The native server's ``grpc.ServicerContext``: one implementation for every method and
handler (the data plane's through the pipeline, health, reflection), doing what grpcio's does
with the call's state kept here and in the C++ call."""

import functools
import logging
import re
import threading
import time
from collections.abc import Callable

import grpc

log = logging.getLogger(__name__)


class NativeContext(grpc.ServicerContext):
    def __init__(self, call, metadata: tuple, peer: str, remaining: float | None,
                 watch_end: Callable[["NativeContext"], None]):
        """``call``: the C++ call; ``remaining``: seconds to its deadline (None: none);
        ``watch_end(context)``: asks the server to run ``context.end()`` if it is cancelled."""
        self._call = call
        self._metadata = metadata
        self._peer = peer
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self._watch_end = watch_end
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple = ()
        self._callbacks: list[Callable[[], None]] = []
        self._ended = False
        self._ending = threading.Lock()

    # grpc.RpcContext

    def is_active(self) -> bool:
        return not self._ended and self._call.active()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> None:
        self._call.cancel()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Runs ``callback`` once the call has ended; False if it has ended already (a call
        cancelled but not ended yet keeps it: the end that follows runs it, as on grpcio)."""
        with self._ending:
            if self._ended:
                return False
            self._callbacks.append(callback)
            if len(self._callbacks) > 1:
                return True
        self._watch_end(self)  # if cancelled already, the call ends all the same: end() runs it
        return True

    def end(self) -> None:
        """The call is over: runs the callbacks, once."""
        with self._ending:
            if self._ended:
                return
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a call's callback failed")

    # grpc.ServicerContext

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer

    @functools.cached_property
    def _auth_state(self) -> tuple:
        """(identity key or None, {property: [values]}), as grpcio gives them."""
        key, pairs = self._call.auth() or (None, ())
        properties: dict[str, list[bytes]] = {}
        for name, value in pairs:
            properties.setdefault(name, []).append(value)
        return key, properties

    def peer_identities(self):
        key, properties = self._auth_state
        return properties.get(key) if key else None

    def peer_identity_key(self):
        return self._auth_state[0]

    def auth_context(self):
        return self._auth_state[1]

    def set_compression(self, compression) -> None:
        raise NotImplementedError("the native server does not compress responses")

    def disable_next_message_compression(self) -> None:
        pass  # it never compresses

    def send_initial_metadata(self, initial_metadata) -> None:
        if (wired := _wire(initial_metadata)) is None:
            self.abort(grpc.StatusCode.INTERNAL, INVALID_METADATA)
        if not self._call.send_initial_metadata(wired):
            raise ValueError("initial metadata can no longer be sent: the call is over, or "
                             "they were sent already")

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self):
        return self._trailing

    def abort(self, code: grpc.StatusCode, details: str):
        """Sets the status and raises a bare Exception, as grpcio's does: the handler's caller
        sees the status set (``code()``) and answers with it."""
        if code == grpc.StatusCode.OK:
            log.error("abort() called with StatusCode.OK; returning UNKNOWN")
            code, details = grpc.StatusCode.UNKNOWN, ""
        self._code, self._details = code, details
        raise Exception()  # grpcio's contract: a bare Exception

    def abort_with_status(self, status: grpc.Status):
        self._trailing = tuple(status.trailing_metadata or ())
        self.abort(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def finish(self, response: bytes | None = None, error: Exception | None = None) -> None:
        """Ends the call with the status set, or OK and ``response``; with ``error`` (the
        handler raised it) the status set, else UNKNOWN as grpcio says it. Then the
        callbacks run."""
        code, details = self._code, self._details or ""
        if error is not None and code is None:
            log.error("Exception calling application: %s", error, exc_info=error)
            code, details = grpc.StatusCode.UNKNOWN, f"Exception calling application: {error}"
        code, trailing = code or grpc.StatusCode.OK, _wire(self._trailing)
        if trailing is None:
            code, details, trailing = grpc.StatusCode.INTERNAL, INVALID_METADATA, ()
        self._call.finish(code.value[0], details if isinstance(details, str)
                          else details.decode(errors="replace"), trailing,
                          response if code is grpc.StatusCode.OK else None)
        self.end()


INVALID_METADATA = "Invalid metadata"  # as grpcio answers it
_KEY = re.compile(r"[0-9a-z_.\-]+")  # HTTP/2 header names as gRPC allows them
_TEXT = re.compile(rb"[\x20-\x7e]*")  # a text value: printable ASCII


def _wire(metadata) -> tuple[tuple[str, bytes], ...] | None:
    """Metadata as gRPC C++ takes it (text values as UTF-8), or None if it holds a key or a
    text value gRPC refuses: gRPC C++ would abort the whole process on it."""
    wired = []
    for key, value in metadata:
        data = value.encode() if isinstance(value, str) else value
        if not (isinstance(key, str) and _KEY.fullmatch(key) and isinstance(data, bytes)
                and (key.endswith("-bin") or _TEXT.fullmatch(data))):
            return None
        wired.append((key, data))
    return tuple(wired)
