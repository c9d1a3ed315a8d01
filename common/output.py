"""The command lines' standard output (fmnist, fmnist-train): a write it cannot take is said
naming it, "stdout: No space left on device" (`> /dev/full`, a full disk under `> file`), not
Python's "[Errno 28] No space left on device", which named nothing; a reader that stopped
(`| head -1`) is the caller's to take (``keep_running``)."""

import contextlib
import os
import sys
from collections.abc import Iterator


class StdoutError(OSError):
    """A write to the standard output failed; ``str()`` names it."""

    def __str__(self) -> str:
        return f"stdout: {self.strerror}"


class NamedStdout:
    """``stream`` (sys.stdout) whose failed writes raise ``StdoutError``. Once one failed,
    the rest of its buffer goes to /dev/null: flushed at exit, it failed again, as Python's
    "Exception ignored ..." and exit status 120. With ``keep_running``, a reader that stopped
    (BrokenPipeError) is not an error: the output goes to /dev/null from then on. ``give_back``
    gives its descriptor back its own file (a caller's later prints went to /dev/null)."""

    def __init__(self, stream, keep_running: bool = False):
        self._stream = stream
        self._keep_running = keep_running
        self._own = None  # the descriptor's own file (a copy), while /dev/null has its place
        self.line_open = False  # the last write did not end its line (a progress bar's)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        self.line_open = not text.endswith("\n") if text else self.line_open
        with self._named():
            return self._stream.write(text)
        return len(text)  # a stopped reader's, with keep_running

    def flush(self) -> None:
        with self._named():
            self._stream.flush()

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            with contextlib.suppress(OSError, ValueError):  # no descriptor (a StringIO)
                devnull = os.open(os.devnull, os.O_WRONLY)
                self._own = os.dup(self._stream.fileno()) if self._own is None else self._own
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
            if isinstance(error, BrokenPipeError):
                if self._keep_running:
                    return
                raise
            raise StdoutError(error.errno, error.strerror) from None

    def give_back(self) -> None:
        """The descriptor's own file back, what the stream still holds dropped first (into
        /dev/null: written at exit, it would fail again)."""
        if self._own is not None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()
            os.dup2(self._own, self._stream.fileno())
            os.close(self._own)
            self._own = None


def end_open_line() -> None:
    """Ends the line a progress bar left open on sys.stdout (Keras' bar redraws its line with
    "\r" until its epoch ends), so that a line said on stderr next starts a line of its own:
    "fmnist-train: interrupted" was written at the end of the bar. A failed write is let go:
    the line about to be said matters more."""
    if isinstance(sys.stdout, NamedStdout) and sys.stdout.line_open:
        with contextlib.suppress(OSError):
            print(flush=True)


@contextlib.contextmanager
def named_stdout(keep_running: bool = False) -> Iterator[None]:
    """sys.stdout as a ``NamedStdout`` for the block, flushed at its end (where a failure can
    still be said) and given back after it, its descriptor too: a process that called a
    command's ``main()`` (a job's thread) kept it wrapped, and after a failed write, its
    descriptor 1 on /dev/null. A sys.stdout that is None (`>&-`) or already wrapped (a command
    within a command) is left as it is."""
    original = sys.stdout
    if original is None or isinstance(original, NamedStdout):
        yield
        return
    named = sys.stdout = NamedStdout(original, keep_running)
    try:
        yield
        named.flush()
    finally:
        named.give_back()
        if sys.stdout is named:
            sys.stdout = original
