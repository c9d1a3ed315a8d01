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
dropped from the queue. All queue state lives on the event loop thread: no locks.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serving.metrics import ModelMetrics


@dataclass(frozen=True)
class BatchingPolicy:
    max_images: int = 256  # images per onnxruntime call (1: no batching)
    max_delay_s: float = 0.0  # how long a non-full batch waits for more requests
    concurrency: int = 1  # onnxruntime calls of one model version at a time
    inline_max_images: int = 0  # batches up to this size run on the event loop thread


class InferenceExecutor(ThreadPoolExecutor):
    """The inference threads, and the batching policy of every model version using them."""

    def __init__(self, threads: int, max_batch_images: int = 256, max_delay_s: float = 0.0,
                 inline_max_images: int = 0):
        super().__init__(threads, thread_name_prefix="inference")
        self.policy = BatchingPolicy(max_batch_images, max_delay_s, threads, inline_max_images)


def policy_for(executor: Executor) -> BatchingPolicy:
    """An InferenceExecutor's policy; other executors batch with the defaults, one call at a
    time per thread."""
    if isinstance(executor, InferenceExecutor):
        return executor.policy
    return BatchingPolicy(concurrency=getattr(executor, "_max_workers", 1))


@dataclass
class _Request:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float


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

    async def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 [N,28,28]`` -> ``(probabilities [N,classes], labels [N])``, N its own rows."""
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
        """The longest run of waiting requests within ``max_images`` (at least one)."""
        batch, images = [], 0
        while self._waiting:
            size = len(self._waiting[0].images)
            if batch and images + size > self._policy.max_images:
                break
            request = self._waiting.popleft()
            self._waiting_images -= size
            if request.future.cancelled():
                continue
            batch.append(request)
            images += size
        return batch

    def _execute(self, batch: list[_Request]):
        """In an inference thread: one onnxruntime call for the whole batch."""
        started = time.perf_counter()
        images = (batch[0].images if len(batch) == 1
                  else np.concatenate([request.images for request in batch]))
        probabilities, labels = self._run(images)
        return probabilities, labels, started, time.perf_counter() - started

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
        finished = time.perf_counter()
        if error is not None:
            for request in batch:
                self._metrics.failed(finished - request.enqueued)
                if not request.future.done():
                    request.future.set_exception(error)
        elif batch:
            probabilities, labels, started, compute_s = result
            self._metrics.executed(len(labels))
            start, queue_s, total_s = 0, 0.0, 0.0
            for request in batch:
                end = start + len(request.images)
                queue_s += started - request.enqueued
                total_s += finished - request.enqueued
                if not request.future.done():
                    request.future.set_result((probabilities[start:end], labels[start:end]))
                start = end
            self._metrics.succeeded(len(batch), queue_s, len(batch) * compute_s, total_s)
        self._dispatch(loop)
