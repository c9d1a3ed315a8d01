"""How ``fmnist-train`` takes a stop: SIGTERM (timeout(1), docker stop, Kubernetes) as Ctrl-C,
and, called in a process that goes on after it, the process's own handlers given back."""

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: nothing of the run is left behind."""


def terminate(_signal, _frame) -> None:
    raise Terminated


def handle(stop: signal.Signals, handler) -> None:
    """``signal.signal``, on the main thread only: Python runs handlers there, and only there
    may they be set (from another, a job's worker thread calling ``training.cli.main``, the run
    failed at once: "signal only works in main thread"); a stop then is the process's own."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(stop, handler)


@contextlib.contextmanager
def handlers_given_back() -> Iterator[None]:
    """SIGTERM's and SIGINT's handlers as they were before, however the block ends: the run
    sets its own (SIGTERM raising Terminated; both ignored while a failed run is undone; both
    the default once the versions are published), which left a notebook or a job in Python that
    called ``training.cli.main`` ignoring Ctrl-C, or killed by it."""
    handlers = {stop: signal.getsignal(stop) for stop in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for stop, handler in handlers.items():
            if handler is not None:  # None: not set from Python, none to give back
                handle(stop, handler)
