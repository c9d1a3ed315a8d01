"""``fmnist score --csv``: each answer's rows written as it arrives, on a thread of their own
while the scoring goes on, so that a run stopped midway (Ctrl-C, SIGTERM) leaves the rows of
every image answered; they were written at the end, and a stopped run left none."""

import csv
import queue
import threading
from collections.abc import Callable
from typing import TextIO

import numpy as np

from serving.client.api import Classification, ModelAnswer

HEADER = ("index", "true_label", "model_label", "model_class", "model_probability",
          "baseline_label", "baseline_class", "baseline_probability")
_CLOSE = object()


class Predictions:
    """The rows of the answers in ``answers``, the run's own list, which it appends to and
    then calls ``arrived``: the thread reads the list, so that the rows written are those of
    the answers counted, even if a stop comes between the two. ``into(write)`` opens the file,
    runs ``write`` on it and says a failure in one line (scoring's ``_write``)."""

    def __init__(self, answers: list[Classification], offset: int, labels: np.ndarray,
                 into: Callable[[Callable[[TextIO], None]], object]):
        self._answers, self._offset, self._labels = answers, offset, labels
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe in a stop
        self.rows = 0
        self.error: Exception | None = None  # what failed the writing, said by the run
        self._thread = threading.Thread(target=self._run, args=(into,), name="fmnist-csv",
                                        daemon=True)
        self._thread.start()

    def arrived(self) -> None:
        """One more answer in the list; the error that failed the writing, if one did: the
        run stops there (a reader that quit, `--csv - | head`), not at its end."""
        if self.error:
            raise self.error
        self._arrivals.put(None)

    def close(self) -> None:
        """Writes the rows not written yet and ends the file (again: nothing)."""
        self._arrivals.put(_CLOSE)
        self._thread.join()

    def _run(self, into) -> None:
        try:
            into(self._write)
        except Exception as error:  # raised on the run's thread (arrived, or the run's end)
            self.error = error

    def _write(self, file: TextIO) -> None:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        written, closed = 0, False
        while not closed:
            closed = self._arrivals.get() is _CLOSE
            for answer in self._answers[written:]:
                writer.writerows(self._rows(answer))
                written += 1
            file.flush()  # a reader of a pipe (`--csv - | ...`) gets the rows as they come

    def _rows(self, answer: Classification):
        def columns(side: ModelAnswer) -> tuple:
            return (side.labels.tolist(), side.class_names,
                    side.probabilities.max(axis=1).astype(np.float64).round(6).tolist())

        start, self.rows = self.rows, self.rows + len(answer)
        return zip(range(self._offset + start, self._offset + self.rows),
                   self._labels[start:self.rows].tolist(), *columns(answer.model),
                   *columns(answer.baseline), strict=True)
