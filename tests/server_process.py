"""A server process for the tests that need one (``server_process``), what they read of it:
its JSON log lines (``Logs``) and its child processes (``children``)."""

import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


@contextlib.contextmanager
def server_process(model_repository: Path, *flags: str, prefix: tuple[str, ...] = ()):
    """Yields ``(process, logs)`` of ``python -m serving`` on 127.0.0.1 (a port of its own,
    JSON log lines) run after ``prefix`` (e.g. taskset); at the end, a process still running is
    terminated, then killed if it does not stop."""
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "serving", "--model-repository", str(model_repository),
         "--host", "127.0.0.1", "--port", "0", "--log-format", "json", *flags],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield process, Logs(process.stderr)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


class Logs:
    """The server's JSON log lines, read on a thread so that the pipe never fills."""

    def __init__(self, stream):
        self.lines: list[dict] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream):
        for line in stream:
            try:
                entry = json.loads(line)
            except ValueError:  # a traceback, gRPC C++'s own log: kept, shown if a wait fails
                entry = {"message": None, "text": line.rstrip("\n")}
            with self._changed:
                self.lines.append(entry)
                self._changed.notify_all()

    def all_lines(self, timeout: float = 30) -> list[dict]:
        """Every line, once the process (and every child sharing its stderr) has ended and
        the last is read: what a test finds absent from them was never said (``lines`` read
        sooner may still lack the last ones)."""
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"stderr still open after {timeout} s: {self.lines}"
        return self.lines

    def wait_for(self, message: str, count: int = 1, timeout: float = 60) -> list[dict]:
        with self._changed:
            found = self._changed.wait_for(
                lambda: len(self.matching(message)) >= count, timeout=timeout)
            assert found, f"no {message!r} log line in {self.lines}"
            return self.matching(message)

    def wait_for_text(self, ending: str, timeout: float = 60) -> list[str]:
        """The lines not in JSON (gRPC C++'s own log) that end with ``ending``, once one has."""
        with self._changed:
            found = self._changed.wait_for(lambda: [text for text in self.texts()
                                                    if text.endswith(ending)], timeout=timeout)
            assert found, f"no line ending {ending!r} in {self.lines}"
            return found

    def texts(self) -> list[str]:
        return [line["text"] for line in self.lines if line["message"] is None]

    def matching(self, message: str) -> list[dict]:
        return [line for line in self.lines if line["message"] == message]


def children(pid: int) -> list[int]:
    """The child processes of ``pid``'s threads (Linux), less those of threads that ended
    while they were listed (their ``children`` file is gone: OSError)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            found += Path(f"/proc/{pid}/task/{task}/children").read_text().split()
    return [int(child) for child in found]


def thread_states(pid: int) -> list[str]:
    """Each thread of ``pid`` as "name state wchan syscall" from /proc (Linux): where a process
    that should have exited is waiting, for a failing test's message."""
    states = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            state = stat.rsplit(")", 1)[1].split()[0]
            syscall = (task / "syscall").read_text().split()[0] if os.geteuid() == 0 else "?"
            states.append(f"{task.name} {name} {state} {(task / 'wchan').read_text()} {syscall}")
    return states


@contextlib.contextmanager
def held_in_read(fifo: Path, timeout: float = 30):
    """Waits until a process has opened ``fifo`` to read (a worker loading it as a manifest),
    then keeps it waiting in read() until the block ends: "stuck by now" without guessing a
    sleep, which a loaded machine outlasted."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
            break
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            assert time.monotonic() < deadline, f"nobody opened {fifo} to read in {timeout} s"
            time.sleep(0.02)
    try:
        yield
    finally:
        os.close(writer)
