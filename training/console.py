"""What ``fmnist-train`` prints: its final table, and a standard output that may close under
it (``fmnist-train ... | head -1``) without ending the run."""

import os
import sys


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
