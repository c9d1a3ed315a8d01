"""How ``fmnist`` takes a stop: SIGTERM (timeout(1), a job's end) as Ctrl-C, each said in one
line, as ``fmnist-train`` says them; called in a process that goes on after it (a job's thread
calling ``cli.main``), the process's own SIGTERM handler is left, or given back."""

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C is: it killed the command without a word."""


def _terminate(_signal, _frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the block; only the main thread may set a handler, and
    a SIGTERM the caller ignores stays ignored (as Python leaves an ignored SIGINT)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if previous is not None:  # None: not set from Python, none to give back
            signal.signal(signal.SIGTERM, previous)


def said(stop: KeyboardInterrupt) -> tuple[str, int]:
    """The line's words for ``stop`` (and how far the command got, its ``progress`` if it set
    one), and the exit status a shell gives a command its signal ended."""
    terminated = isinstance(stop, Terminated)
    return (f"{'stopped (SIGTERM)' if terminated else 'interrupted'}"
            f"{getattr(stop, 'progress', '')}",
            128 + (signal.SIGTERM if terminated else signal.SIGINT))
