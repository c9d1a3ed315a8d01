"""The worker side of ``serving.workers``: what a forked worker process runs, and how it
reports its start to the supervisor."""

import contextlib
import ctypes
import functools
import mmap
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

from serving.entry import STOP_SIGNALS
from serving.errors import ListenError, RepositoryError
from serving.settings import Settings

READY = b"\x00"
READER_PAUSE_S = 2.0  # the supervisor reads the heartbeats at least once a second
PR_SET_PDEATHSIG = 1  # linux/prctl.h
HELD_SIGNALS = {*STOP_SIGNALS, signal.SIGCHLD}  # blocked over each fork


@contextlib.contextmanager
def signals_held():
    """Holds STOP_SIGNALS and SIGCHLD over a fork: until the child has handlers of its own it
    would run the supervisor's, in the child, and the signal would be lost (a worker told to
    stop while it starts served on). Yields what the child runs first: ``become_child`` with
    the mask to restore and this process as its supervisor, given its ``inherited``."""
    supervisor = os.getpid()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield functools.partial(become_child, previous, supervisor)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def become_child(mask, supervisor: int, inherited: Iterable[int]) -> None:
    """In a child forked in ``signals_held`` (a worker, the metrics process): the default
    action for the supervisor's signals, then the signal mask from before (one sent meanwhile
    ends the child); SIGTERM if the supervisor dies; none of its ``inherited`` descriptors."""
    signal.set_wakeup_fd(-1)
    for signal_number in HELD_SIGNALS:
        signal.signal(signal_number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    # SIGTERM (drain and exit) from the kernel if the supervisor dies, even by SIGKILL, so that
    # no worker outlives it (Linux; elsewhere a no-op)
    with contextlib.suppress(OSError, AttributeError):  # no libc, or no prctl in it
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    for fd in inherited:
        os.close(fd)


class Heartbeats:
    """When each worker slot's main thread last ran (``time.monotonic()``), and the metrics
    process's (the last slot, -1), in memory mapped before they are forked (an anonymous map
    is shared): a serving worker stamps its slot ten times a second (``serving.server.serve``'s
    loop), the metrics process at least every 0.5 s; the supervisor reads them."""

    def __init__(self, slots: int):
        self._stamps = memoryview(mmap.mmap(-1, 8 * slots)).cast("d")
        self._read_at = self._resumed_at = time.monotonic()

    def beat(self, slot: int, ahead_s: float = 0.0) -> None:
        """Stamps ``slot`` now, or ``ahead_s`` later: a draining worker beats no more."""
        self._stamps[slot] = time.monotonic() + ahead_s

    def silent_s(self, slots: Iterable[int]) -> dict[int, float]:
        """How long each of ``slots`` has been silent. If the reader itself did not run for
        over READER_PAUSE_S (stopped with the workers: Ctrl-Z, a frozen cgroup, a paused VM),
        their silence was its own: it counts from then (they may run after the reader)."""
        now = time.monotonic()
        if now - self._read_at > READER_PAUSE_S:
            self._resumed_at = now  # not stamped for them: a draining worker's stamp is ahead
        self._read_at = now
        return {slot: now - max(self._resumed_at, self._stamps[slot]) for slot in slots}


class StartReport:
    """The worker's end of its start-report pipe: written once, then closed, never written
    after that (the descriptor number may by then belong to a client's socket)."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def send(self, message: bytes) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # the supervisor may be gone
                os.write(self._fd, message)
            os.close(self._fd)
            self._fd = None


def worker_main(settings: Settings, slot: int, report_fd: int, inherited: list[int],
                 start_child: Callable[[list[int]], None], *, heartbeats: Heartbeats) -> None:
    """In the forked child (``start_child``: what ``signals_held`` yielded): serve until
    SIGTERM, report the start; never returns."""
    status = 1
    report = StartReport(report_fd)
    try:
        start_child(inherited)
        # prometheus_client names a process's metrics files by its pid, and a dead worker's
        # counters must stay in the sums: every replacement would add a set of files that each
        # scrape and ``ModelStatistics`` read. Named by slot, a replacement carries on its
        # predecessor's files. Set before serving.metrics is imported (its metrics take their
        # value class then); the supervisor forks a slot's replacement only after reaping the
        # old one.
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue(lambda: slot)
        from serving.server import serve

        def ready(_server) -> None:  # its first heartbeat before the supervisor looks
            heartbeats.beat(slot)
            report.send(READY)

        status = serve(settings, on_ready=ready, heartbeat=functools.partial(heartbeats.beat, slot))
    except (RepositoryError, ListenError) as error:
        report.send(str(error).encode())
    except BaseException as error:  # a worker reports any failure, then exits
        sys.excepthook(*sys.exc_info())  # the traceback, in the log's format
        report.send(f"worker failed: {type(error).__name__}: {error}".encode())
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()
