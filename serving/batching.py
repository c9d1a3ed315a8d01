"""Dynamic batching: concurrent predictions of one model version share one onnxruntime call.

Each model version has one ``Batcher``, and ``predict`` is its only entry; it blocks the
calling thread (the thread answering the call) until that request's rows are computed.
No thread of its own: while fewer than ``max_parallel`` onnxruntime calls of the version run,
a caller leads, that is runs a batch itself on its own thread, right away, so a lone request
costs no hand-off. Callers that arrive while every slot is taken queue, and a leader's next
batch takes everything queued in arrival order (up to ``max_images`` images; a larger request
goes alone, never split): under load many small requests become one call. A leader keeps its
slot until its own request is answered or taken into another leader's batch, then hands the
slot to the caller at the head of the queue (or frees it), so no caller runs batches queued
behind its own.

A request whose call has ended (deadline passed, client gone) is never computed: it leaves
the queue within ``_ENDED_CHECK_S``, or when a batch takes it if that comes first; a failing
batch fails only its own requests. With
``max_delay_s`` > 0 a leader waits that long for a batch that is not yet full.
"""

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.metrics import ModelMetrics
from serving.pipeline import Call


@dataclass(frozen=True)
class BatchingPolicy:
    max_images: int = 256  # images per onnxruntime call (1: no batching)
    max_parallel: int = 1  # onnxruntime calls of one model version at a time
    max_delay_s: float = 0.0  # how long a batch that is not full waits for more requests


class _Request:
    __slots__ = ("call", "enqueued", "error", "images", "leads", "result", "taken", "wakeup")

    def __init__(self, images: np.ndarray, call: Call | None):
        self.images = images
        self.call = call
        self.enqueued = time.perf_counter()
        self.result: tuple[np.ndarray, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.leads = False  # holds a slot: runs batches until answered or taken
        self.taken = False  # out of the queue, into a batch
        self.wakeup: queue.SimpleQueue[None] = queue.SimpleQueue()  # put: look again

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


RunModel = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

_ENDED_CHECK_S = 0.05  # how often a queued request looks whether its call ended


class BatchRunError(Exception):
    """The model's run of a batch failed: each of its requests gets one of its own, the run's
    error as its cause (one exception raised on every waiting thread gathers all their
    frames, and each log line would show the others')."""


class Batcher:
    def __init__(self, run: RunModel, policy: BatchingPolicy, metrics: ModelMetrics,
                 model: str = "the model"):
        """``run``: ``uint8 [N,28,28]`` -> ``(probabilities, labels)``, one onnxruntime call
        (which releases the GIL, so slots run in parallel on several cores); ``model`` names
        it in a failed run's error (the operator's log: which of the versions served)."""
        self._run, self._model = run, model
        self._policy = policy
        self._metrics = metrics
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # for max_delay_s
        self._waiting: deque[_Request] = deque()
        self._waiting_images = 0
        self._running = 0  # slots taken

    def predict(self, images: np.ndarray, call: Call | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 [N,28,28]`` -> ``(probabilities [N,classes], labels [N])``, its own rows;
        raises the batch's error, or DeadlineExceeded / Cancelled if ``call`` ended first."""
        request = _Request(images, call)
        with self._lock:  # a leader's request queues too: its batch takes it in arrival order
            self._waiting.append(request)
            self._waiting_images += len(images)
            if self._running < self._policy.max_parallel:
                self._running += 1
                request.leads = True
            else:
                self._arrived.notify()
        while True:  # state changes before each wakeup.put: check after every get
            if request.leads:
                self._lead(request)
            if request.done:
                break
            try:
                request.wakeup.get(timeout=_ENDED_CHECK_S)
            except queue.Empty:
                self._withdraw_if_ended(request)
        if request.error is not None:
            raise request.error
        return request.result

    def _lead(self, own: _Request) -> None:
        """Runs batches while ``own`` waits in the queue; once it is answered, or taken into
        another leader's batch, passes the slot on (whatever fails meanwhile)."""
        policy = self._policy
        try:
            while True:
                with self._lock:
                    if own.done or own.taken:
                        return
                    if policy.max_delay_s > 0 and self._waiting_images < policy.max_images:
                        self._arrived.wait_for(
                            lambda: self._waiting_images >= policy.max_images or own.taken,
                            policy.max_delay_s)
                        if own.taken:
                            return
                    batch = self._take()
                self._execute(batch)
        finally:
            with self._lock:
                own.leads = False
                # not another leader, whose own request may still wait behind the batches it
                # runs: handed this slot too, it would give back one of two, a slot lost for good
                successor = next((waiting for waiting in self._waiting if not waiting.leads), None)
                if successor is None:
                    self._running -= 1
                else:
                    successor.leads = True
                    successor.wakeup.put(None)

    def _withdraw_if_ended(self, request: _Request) -> None:
        """A queued request whose call ended (deadline, cancellation) leaves the queue now,
        answered with why: its call thread and its place under --max-concurrent-calls are
        freed, instead of when a batch would have taken it."""
        if request.call is None or (gone := request.call.gone()) is None:
            return
        with self._lock:
            if request.taken or request.leads or request.done:
                return
            self._waiting.remove(request)
            self._waiting_images -= len(request.images)
            self._settle(request, error=gone)
        self._metrics.failed(time.perf_counter() - request.enqueued)

    def _take(self) -> list[_Request]:
        """The longest run of waiting requests within ``max_images`` (at least one), less
        those whose call has ended (answered with why). Under the lock."""
        batch, images = [], 0
        while self._waiting:
            size = len(self._waiting[0].images)
            if batch and images + size > self._policy.max_images:
                break
            request = self._waiting.popleft()
            self._waiting_images -= size
            request.taken = True
            if request.leads:  # its caller waits out --batch-delay-us: its answer is coming
                self._arrived.notify_all()
            try:
                if request.call is not None:
                    request.call.check_alive()
            except Exception as error:  # ServingError: why; anything else: the transport's bug
                self._settle(request, error=error)
                self._metrics.failed(time.perf_counter() - request.enqueued)
                continue
            batch.append(request)
            images += size
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        """One onnxruntime call for the whole batch; each request gets its rows, or the
        error, whatever fails (a request left unanswered would wait for ever)."""
        if not batch:
            return
        started = time.perf_counter()
        try:
            images = (batch[0].images if len(batch) == 1
                      else np.concatenate([request.images for request in batch]))
            probabilities, labels = self._run(images)
            finished = time.perf_counter()
            start, queue_s = 0, 0.0
            for request in batch:
                end = start + len(request.images)
                queue_s += started - request.enqueued
                self._settle(request, result=(probabilities[start:end], labels[start:end]))
                start = end
            self._metrics.succeeded(len(batch), len(labels), queue_s, finished - started)
        except Exception as error:
            finished = time.perf_counter()
            for request in batch:
                if not request.done:
                    failure = BatchRunError(f"the run of {self._model} failed: "
                                            f"{type(error).__name__}: {error}")
                    failure.__cause__ = error
                    self._settle(request, error=failure)
                    self._metrics.failed(finished - request.enqueued)

    @staticmethod
    def _settle(request: _Request, result=None, error: BaseException | None = None) -> None:
        request.result, request.error = result, error
        request.wakeup.put(None)
