"""Dynamic batching: concurrent predictions for one model version share one onnxruntime call.

Each model version has a queue. A prediction starts at once while fewer than ``concurrency``
onnxruntime calls of that version run; otherwise it waits, and the next call to start takes
everything waiting (in arrival order, up to ``max_images`` images; a larger request goes
alone, never split). So at low load nothing waits and a single client pays nothing, while
under load many small requests become one call. With ``max_delay_s`` > 0 a batch that is not
full waits up to that long for more requests first.

Batches of at most ``inline_max_images`` images run on the event loop thread itself, right
after the loop iteration that queued them (so requests arriving together still share a call):
the hand-off to an inference thread and back costs CPU (context switches, the GIL) that buys no
parallelism when the worker processes already use every core.

Requests arrive validated (the codecs check them before they queue), so a batch fails only if
onnxruntime fails, and then each of its requests gets that error; cancelled requests are
dropped from the queue. All queue state of ``Batcher`` lives on the event loop thread: no locks.

Callers on other threads (the native front door answers unary calls on gRPC's own threads,
``serving.frontdoor``) get the same policy from ``ThreadBatcher``, without an event loop: the
first of them to find an onnxruntime slot free runs the batch on its own thread, for everyone
waiting, and resumes each of them (``serving.threadtasks``). ``Batcher.predict`` sends them
there by itself. The two queues of a version are separate (each runs up to ``concurrency``
calls at once): with the front door, only streams use the event loop's.
"""

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serving.metrics import ModelMetrics
from serving.threadtasks import Pending, call_soon


@dataclass(frozen=True)
class BatchingPolicy:
    max_images: int = 256  # images per onnxruntime call (1: no batching)
    max_delay_s: float = 0.0  # how long a non-full batch waits for more requests
    concurrency: int = 1  # onnxruntime calls of one model version at a time
    inline_max_images: int = 0  # batches up to this size run on the event loop thread


class InferenceExecutor(ThreadPoolExecutor):
    """The inference threads, and the batching policy of every model version using them.

    ``cores``: where the threads may run even if the thread that starts them is pinned to one
    core (a pinned worker, ``serving.workers``), so that big batches (scoring's) use them all.
    """

    def __init__(self, threads: int, max_batch_images: int = 256, max_delay_s: float = 0.0,
                 inline_max_images: int = 0, cores: Sequence[int] = ()):
        super().__init__(threads, thread_name_prefix="inference",
                         initializer=_run_on, initargs=(tuple(cores),))
        self.policy = BatchingPolicy(max_batch_images, max_delay_s, threads, inline_max_images)


def _run_on(cores: tuple[int, ...]) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


def policy_for(executor: Executor) -> BatchingPolicy:
    """An InferenceExecutor's policy; other executors batch with the defaults, one call at a
    time per thread."""
    if isinstance(executor, InferenceExecutor):
        return executor.policy
    return BatchingPolicy(concurrency=getattr(executor, "_max_workers", 1))


def on_event_loop() -> bool:
    """Whether this thread runs an event loop (else it is one of the front door's threads)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@dataclass
class _Request:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()

    def resolve(self, value) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def reject(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _execute(run: Callable, batch: list) -> tuple:
    """One onnxruntime call for the whole batch."""
    started = time.perf_counter()
    images = (batch[0].images if len(batch) == 1
              else np.concatenate([request.images for request in batch]))
    probabilities, labels = run(images)
    return probabilities, labels, started, time.perf_counter() - started


def _settle(batch: list, result: tuple | None, error: BaseException | None,
            metrics: ModelMetrics) -> None:
    """Gives each request of an executed batch its own rows, or the batch's error."""
    finished = time.perf_counter()
    if error is not None:
        for request in batch:
            metrics.failed(finished - request.enqueued)
            request.reject(error)
        return
    if not batch:
        return
    probabilities, labels, started, compute_s = result
    metrics.executed(len(labels))
    start, queue_s, total_s = 0, 0.0, 0.0
    for request in batch:
        end = start + len(request.images)
        queue_s += started - request.enqueued
        total_s += finished - request.enqueued
        request.resolve((probabilities[start:end], labels[start:end]))
        start = end
    metrics.succeeded(len(batch), queue_s, len(batch) * compute_s, total_s)


def _take(waiting: deque, max_images: int) -> tuple[list, int]:
    """The longest run of waiting requests within ``max_images`` (at least one), and the
    number of images that left the queue."""
    batch, images, removed = [], 0, 0
    while waiting:
        size = len(waiting[0].images)
        if batch and images + size > max_images:
            break
        request = waiting.popleft()
        removed += size
        if request.cancelled:
            request.reject(asyncio.CancelledError())
            continue
        batch.append(request)
        images += size
    return batch, removed


class Batcher:
    """The queue of one model version; ``predict`` is its only entry."""

    def __init__(self, run: Callable, executor: Executor, policy: BatchingPolicy,
                 metrics: ModelMetrics):
        self._run = run  # uint8 [N,28,28] -> (probabilities, labels), in an executor thread
        self._executor = executor
        self._policy = policy
        self._metrics = metrics
        self._waiting: deque[_Request] = deque()
        self._waiting_images = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._inline_pending = False
        self._threads = ThreadBatcher(run, policy, metrics)

    async def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 [N,28,28]`` -> ``(probabilities [N,classes], labels [N])``, N its own rows.

        Off the event loop (a front-door thread), through ``ThreadBatcher``."""
        if not on_event_loop():
            return await self._threads.predict(images)
        loop = asyncio.get_running_loop()
        request = _Request(images, loop.create_future(), time.perf_counter())
        self._waiting.append(request)
        self._waiting_images += len(images)
        self._dispatch(loop)
        return await request.future

    def _dispatch(self, loop: asyncio.AbstractEventLoop, flush: bool = False) -> None:
        policy = self._policy
        while self._waiting and self._running < policy.concurrency:
            if (policy.max_delay_s > 0 and not flush
                    and self._waiting_images < policy.max_images):
                if self._timer is None:
                    self._timer = loop.call_later(policy.max_delay_s, self._flush, loop)
                return
            if self._waiting_images <= policy.inline_max_images:
                if not self._inline_pending:
                    self._inline_pending = True
                    self._running += 1
                    loop.call_soon(self._run_inline, loop)
                break
            batch = self._take()
            if not batch:
                continue
            self._running += 1
            future = loop.run_in_executor(self._executor, self._execute, batch)
            future.add_done_callback(lambda done, batch=batch: self._finished(loop, batch, done))
        if self._timer is not None and not self._waiting:
            self._timer.cancel()
            self._timer = None

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._dispatch(loop, flush=True)

    def _take(self) -> list[_Request]:
        batch, removed = _take(self._waiting, self._policy.max_images)
        self._waiting_images -= removed
        return batch

    def _execute(self, batch: list[_Request]):
        """In an inference thread, or inline on the event loop."""
        return _execute(self._run, batch)

    def _run_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        self._inline_pending = False
        batch = self._take()
        try:
            result, error = self._execute(batch) if batch else None, None
        except Exception as failure:  # given to each request of the batch
            result, error = None, failure
        self._finish(loop, batch, result, error)

    def _finished(self, loop, batch: list[_Request], done: asyncio.Future) -> None:
        if done.cancelled():
            self._finish(loop, batch, None, asyncio.CancelledError())
        else:
            self._finish(loop, batch, None if done.exception() else done.result(),
                         done.exception())

    def _finish(self, loop, batch: list[_Request], result, error: BaseException | None) -> None:
        self._running -= 1
        _settle(batch, result, error, self._metrics)
        self._dispatch(loop)


class _ThreadRequest(Pending):
    """A request awaited by a coroutine on a front-door thread (``serving.threadtasks``)."""

    __slots__ = ("enqueued", "images")

    def __init__(self, images: np.ndarray, lock: threading.Lock):
        super().__init__(lock)
        self.images = images
        self.enqueued = time.perf_counter()


class ThreadBatcher:
    """``Batcher``'s policy for callers on front-door threads, without an event loop.

    The caller that finds a slot free (fewer than ``concurrency`` batches running) runs the
    batch on its own thread, right after its coroutine suspends: a lone request costs no
    hand-off at all. Others queue and their threads go back to gRPC; the thread holding the
    slot runs the queue in batches, resuming each caller after its batch, until the queue is
    empty. A request whose call ends meanwhile (``Pending.cancel``) leaves the queue. With
    ``max_delay_s`` the slot's thread waits for more requests before a batch that is not full.
    """

    def __init__(self, run: Callable, policy: BatchingPolicy, metrics: ModelMetrics):
        self._run = run
        self._policy = policy
        self._metrics = metrics
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # for max_delay_s
        self._waiting: deque[_ThreadRequest] = deque()
        self._waiting_images = 0
        self._running = 0

    def predict(self, images: np.ndarray) -> Pending:
        """Awaitable ``(probabilities, labels)``, as ``Batcher.predict``; only inside
        ``serving.threadtasks.run_here``."""
        request = _ThreadRequest(images, self._lock)
        with self._lock:
            self._waiting.append(request)
            self._waiting_images += len(images)
            leads = self._running < self._policy.concurrency
            if leads:
                self._running += 1
            else:
                self._arrived.notify()
        if leads:
            call_soon(self._run_queue)
        return request

    def _run_queue(self) -> None:
        """One batch from the queue; then its callers resume, and the next batch follows while
        requests wait (this thread keeps the slot until the queue is empty)."""
        policy = self._policy
        with self._lock:
            if policy.max_delay_s > 0 and self._waiting_images < policy.max_images:
                self._arrived.wait_for(
                    lambda: self._waiting_images >= policy.max_images, policy.max_delay_s
                )
            batch, removed = _take(self._waiting, policy.max_images)
            self._waiting_images -= removed
        try:
            result, error = _execute(self._run, batch) if batch else None, None
        except Exception as failure:  # given to each request of the batch
            result, error = None, failure
        with self._lock:
            try:
                _settle(batch, result, error, self._metrics)
            finally:  # whatever happens, the queue keeps a thread running it, or none waits
                if self._waiting:
                    call_soon(self._run_queue)
                else:
                    self._running -= 1
