"""What ``fmnist-train`` prints: its final table, a warning for a misspelt FMNIST_* variable,
and a standard output that may close under it (``fmnist-train ... | head -1``) without ending
the run."""

import difflib
import os
import sys
from collections.abc import Iterable, Mapping

from common.flags import ENV_PREFIX, READ

NEAR = 0.92  # difflib's ratio: FMNIST_EPOCH is 0.96 of FMNIST_EPOCHS; no variable of
# fmnist-serve's or fmnist's reaches it against fmnist-train's (FMNIST_BASELINE_MODEL: 0.90)


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


class OutputThatMayClose:
    """``stream`` (sys.stdout), whose reader may stop reading: the output goes to /dev/null
    from then on, and the run goes on to publish its models; a BrokenPipeError ended it, minutes
    into its fits, and undid all it had done."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # what is still buffered goes there too
        os.close(devnull)


def keep_running_when_output_closes() -> None:
    """sys.stdout as an OutputThatMayClose (once), or /dev/null if it is None (started with
    its standard output closed: print() wrote nothing, but Keras' progress lines failed); and
    sys.stderr /dev/null, on file descriptor 2, if it is None ('2>&-': a Keras model's run
    failed with "'NoneType' object has no attribute 'flush'", TensorFlow's quiet import
    flushing it, and TensorFlow writes its C++ lines to descriptor 2, whatever file has it)."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open for the rest of the run)
    elif not isinstance(sys.stdout, OutputThatMayClose):
        sys.stdout = OutputThatMayClose(sys.stdout)
    if sys.stderr is None:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.fstat(2)  # another file took descriptor 2 meanwhile: left to it
        except OSError:
            os.dup2(null, 2)
        sys.stderr = open(null, "w")  # noqa: SIM115 (open for the rest of the run)


def near_misses(environ: Mapping[str, str], read: Iterable[str]) -> list[tuple[str, str]]:
    """(variable, the one of ``read`` it nearly spells) for each FMNIST_* variable of
    ``environ`` read by no option, but near one of ``read``."""
    read = sorted(read)
    return [(name, near[0]) for name in sorted(environ)
            if name.startswith(ENV_PREFIX) and name not in read
            and (near := difflib.get_close_matches(name, read, n=1, cutoff=NEAR))]


def warn_of_misspelt_variables() -> None:
    """FMNIST_MLP_EPOCH=40 was ignored without a word, and the run fitted for minutes with the
    default; only near misses are said: a shell or container also holds the server's and the
    client's variables (FMNIST_PORT)."""
    for name, meant in near_misses(os.environ, READ):
        print(f"fmnist-train: warning: {name}: not a setting of fmnist-train (did you mean "
              f"{meant}?); ignored", file=sys.stderr, flush=True)
