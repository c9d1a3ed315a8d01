"""What ``fmnist-train`` prints: its final table, and a standard output that may close under
it (``fmnist-train ... | head -1``) without ending the run."""

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

from common.output import named_stdout
from training.staging import LOCKED_WITHIN_S, Abandoned


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def fit_epochs(run: int, epochs: int, patience: int, best: int | None, stopped: bool) -> str:
    """How many epochs a Keras fit ran and why it ended there, early stopping or not: a run
    whose epochs all ran said nothing of it, as if early stopping had been off. ``stopped``:
    patience ran out, which on the last epoch the count of epochs cannot tell. One epoch of
    one read "1 of 1 epochs (..., all 1 epochs ran)": "1 of 1 epoch", which says they all ran."""
    of, ran = f"{run} of {count(epochs, 'epoch')}", f", all {epochs} epochs ran" * (epochs > 1)
    if not patience:
        return f"{of} (early stopping: off{ran})"
    when = "triggered at the last epoch" if run == epochs else f"stopped after epoch {run}"
    why = (f"{when}, {run - best} without a better validation accuracy" if stopped
           else f"not triggered{ran}")
    return f"{of} (early stopping: {why}; the weights are epoch {best}'s)"


def count(number: int, noun: str) -> str:
    """``2 epochs``, ``1 epoch``."""
    return f"{number} {noun}{'s' * (number != 1)}"


def say_removed(abandoned: list[Abandoned]) -> None:
    """Each killed run's staging directory removed, one line; one that could not be removed,
    or whose lock could not be read, a warning saying why (skipped without a word, for ever)."""
    for staging, error, known, locked in abandoned:
        found = ("its lock is free" if locked else
                 f"empty, without a lock, untouched for over {LOCKED_WITHIN_S:.0f} s")
        if not known:
            print(f"fmnist-train: warning: left {staging} alone: its lock cannot be read, so "
                  f"whether its run still lives is not known ({error.strerror}: "
                  f"{error.filename})", file=sys.stderr, flush=True)
        elif error:
            print(f"fmnist-train: warning: cannot remove {staging}, left by a run that was "
                  f"killed ({found}): {error.strerror}: {error.filename}",
                  file=sys.stderr, flush=True)
        else:
            print(f"removed {staging}: left by a run that was killed ({found})", flush=True)


@contextlib.contextmanager
def seconds_so_far(shown: bool) -> Iterator[None]:
    """On a terminal (``shown``), the seconds the block has taken so far, redrawn each second
    and cleared after it: the baseline's fit, which shows no progress of its own, looked hung
    for its 25 s. A stop or an error leaves the line to the run's last line (end_open_line)."""
    if not shown:
        yield
        return
    done, start, failed = threading.Event(), time.perf_counter(), []

    def tick() -> None:
        try:
            while not done.wait(1):
                print(f"\r{time.perf_counter() - start:.0f} s so far", end="", flush=True)
        except OSError as error:  # the run's to say (common.output), not this thread's
            failed.append(error)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
    if failed:
        raise failed[0]
    print("\r" + " " * 20 + "\r", end="", flush=True)


@contextlib.contextmanager
def output_that_may_close() -> Iterator[None]:
    """For the block: sys.stdout named on a failed write (common.output: "stdout: No space
    left on device"), and a reader that stops reading (``fmnist-train ... | head -1``) not an
    error, the output going to /dev/null from then on and the run going on to publish its
    models (a BrokenPipeError ended it, minutes into its fits, and undid all it had done).
    sys.stdout /dev/null if it is None (started with its standard output closed: print()
    wrote nothing, but Keras' progress lines failed); and sys.stderr /dev/null, on file
    descriptor 2, if it is None ('2>&-': a Keras model's run failed with "'NoneType' object
    has no attribute 'flush'", TensorFlow's quiet import flushing it, and TensorFlow writes its
    C++ lines to descriptor 2, whatever file has it). Both are given back after the block: a
    process that called ``training.cli.main`` (a job's thread) kept them replaced."""
    before = sys.stdout, sys.stderr
    with contextlib.ExitStack() as opened:
        if sys.stdout is None:
            sys.stdout = opened.enter_context(open(os.devnull, "w"))
        if sys.stderr is None:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.fstat(2)  # another file took descriptor 2 meanwhile: left to it
            except OSError:
                os.dup2(null, 2)
            sys.stderr = opened.enter_context(open(null, "w"))
        try:
            with named_stdout(keep_running=True):
                yield
        finally:
            sys.stdout, sys.stderr = before
