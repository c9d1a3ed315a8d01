"""Coroutines run on plain threads (the native front door's gRPC threads), without an event loop.

Why: handing each call to the event loop and back costs two thread wake-ups and the loop's own
overhead per call, and gRPC C++ has only two threads per process to poll with (its callback
threads), so they must never sleep waiting for the model either. So a front-door thread drives
the call's coroutine itself (``run_here``): it runs to its end, or until it awaits a
``Pending`` (a request queued for the model, ``serving.batching.ThreadBatcher``), and the
thread is free again. The thread that later resolves the ``Pending`` resumes the coroutine.

Work scheduled with ``call_soon`` runs on the same thread after the current item, in order (a
trampoline): a thread that answers a batch resumes each of its callers in turn, then runs the
next batch, without recursion.
"""

import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine

log = logging.getLogger(__name__)


class _Trampoline(threading.local):
    items: deque | None = None


_trampoline = _Trampoline()


def call_soon(function: Callable, *args) -> None:
    """Runs ``function(*args)`` on this thread once the current item is done (inside
    ``run_here`` only)."""
    items = _trampoline.items
    if items is None:
        raise RuntimeError("call_soon outside run_here")
    items.append((function, args))


def run_here(function: Callable, *args) -> None:
    """Runs ``function(*args)`` and everything it schedules with ``call_soon`` on this thread."""
    if _trampoline.items is not None:  # already inside: the outer loop runs it
        call_soon(function, *args)
        return
    items = _trampoline.items = deque([(function, args)])
    try:
        while items:
            scheduled, scheduled_args = items.popleft()
            try:
                scheduled(*scheduled_args)
            except Exception:  # a bug: the work queued after it (other calls) still runs
                log.exception("front-door work failed", extra={"fields": {"work": scheduled}})
    finally:
        _trampoline.items = None


class Pending:
    """A result that another thread provides: awaiting it suspends a ``ThreadTask`` until
    ``resolve`` or ``reject``, which may be called from any thread running ``run_here``."""

    __slots__ = ("_callback", "_error", "_lock", "_value", "cancelled", "done")

    def __init__(self, lock: threading.Lock):
        self._lock = lock  # shared with whatever resolves it (a batcher's queue lock)
        self._callback: Callable | None = None
        self._value = None
        self._error: BaseException | None = None
        self.done = False
        self.cancelled = False  # its awaiter no longer wants it (the call ended)

    def resolve(self, value) -> None:
        """Under the lock."""
        self._value = value
        self._settle()

    def reject(self, error: BaseException) -> None:
        """Under the lock."""
        self._error = error
        self._settle()

    def _settle(self) -> None:
        self.done = True
        if self._callback is not None:
            call_soon(self._callback)

    def when_done(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self.done:
                self._callback = callback
                return
        call_soon(callback)

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        if not self.done:
            yield self
        if self._error is not None:
            raise self._error
        return self._value


class ThreadTask:
    """Drives one coroutine on whichever thread resumes it; it may await only ``Pending``."""

    __slots__ = ("_coroutine", "_waiting_on")

    def __init__(self, coroutine: Coroutine):
        self._coroutine = coroutine
        self._waiting_on: Pending | None = None

    def step(self) -> None:
        self._waiting_on = None
        try:
            awaited = self._coroutine.send(None)
        except StopIteration:
            return
        if not isinstance(awaited, Pending):  # a bug: fail the call, not the thread
            try:
                self._coroutine.throw(TypeError(
                    f"a coroutine on a front-door thread awaited {awaited!r}, which needs an "
                    "event loop"))
            except StopIteration:
                return
            self._coroutine.close()
            return
        self._waiting_on = awaited
        awaited.when_done(self.step)

    def cancel(self) -> None:
        """The call ended (client gone, deadline passed): what it waits for is dropped."""
        waiting_on = self._waiting_on
        if waiting_on is not None:
            waiting_on.cancel()
