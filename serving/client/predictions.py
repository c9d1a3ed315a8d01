"""``fmnist score --csv``: each answer's rows written as it arrives, on a thread of their own
while the scoring goes on, so that a run stopped midway (Ctrl-C, SIGTERM) leaves the rows of
every image answered; they were written at the end, and a stopped run left none."""

import csv
import queue
import threading
from collections.abc import Callable
from typing import TextIO

import numpy as np

from serving.client.answers import Classification, ModelAnswer

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
        self.rows = 0  # those flushed: a stop claims none still in a buffer or a full pipe
        self._closed = False
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

    def close(self, within: float | None = None) -> None:
        """Writes the rows not written yet and ends the file (again: nothing). A stop waits
        ``within`` seconds at most, then leaves the thread to the process's end: a reader that
        stopped reading (`--csv - | (sleep 100)`) held it in a write to the full pipe, and the
        stop waited for it forever."""
        if self._closed:
            return
        self._closed = True
        self._arrivals.put(_CLOSE)
        self._thread.join(within)

    def _run(self, into) -> None:
        try:
            into(self._write)
        except Exception as error:  # raised on the run's thread (arrived, or the run's end)
            self.error = error

    def _write(self, file: TextIO) -> None:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        answered, rows, closed = 0, 0, False
        while not closed:
            closed = self._arrivals.get() is _CLOSE
            for answer in self._answers[answered:]:
                writer.writerows(self._rows(rows, answer))
                answered += 1
                rows += len(answer)
            file.flush()  # a reader of a pipe (`--csv - | ...`) gets the rows as they come
            self.rows = rows

    def _rows(self, start: int, answer: Classification):
        """The rows of ``answer``, whose first image is the slice's ``start``."""
        def columns(side: ModelAnswer) -> tuple:
            return (side.labels.tolist(), side.class_names,
                    side.probabilities.max(axis=1).astype(np.float64).round(6).tolist())

        end = start + len(answer)
        return zip(range(self._offset + start, self._offset + end),
                   self._labels[start:end].tolist(), *columns(answer.model),
                   *columns(answer.baseline), strict=True)
