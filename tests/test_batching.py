"""Dynamic batching: concurrent requests share onnxruntime calls, and each gets exactly its
own rows, in order, whatever its neighbours do."""

import asyncio
import threading

import numpy as np
import pytest

from serving.batching import (
    Batcher,
    BatchingPolicy,
    InferenceExecutor,
    on_caller_thread,
    running_on_caller_thread,
)
from serving.metrics import ModelMetrics
from serving.repository import load_repository


@pytest.fixture(scope="module")
def executor():
    with InferenceExecutor(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def model(model_repository, executor):
    return load_repository(model_repository, executor).get("mlp")


class CountingRun:
    """The model's real run, recording the size of every call it gets."""

    def __init__(self, model, fail_on_size: int = -1):
        self.model, self.sizes, self.fail_on_size = model, [], fail_on_size
        self.release = threading.Event()
        self.release.set()

    def __call__(self, images):
        self.release.wait(10)
        self.sizes.append(len(images))
        if len(images) == self.fail_on_size:
            raise RuntimeError("onnxruntime failed")
        prediction = self.model.predict_blocking(images)
        return prediction.probabilities, prediction.labels


def batcher(run, executor, **policy) -> Batcher:
    return Batcher(run, executor, BatchingPolicy(**policy), ModelMetrics("test", 1, "0" * 64))


def mixed_requests(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(1, 9)), 28, 28), dtype=np.uint8)
            for _ in range(count)]


async def test_concurrent_requests_of_mixed_sizes_each_get_their_own_rows(model, executor):
    run = CountingRun(model)
    queue = batcher(run, executor, max_images=32, concurrency=2)
    requests = mixed_requests(200)
    answers = await asyncio.gather(*(queue.predict(images) for images in requests))
    for images, (probabilities, labels) in zip(requests, answers, strict=True):
        alone = model.predict_blocking(images)
        np.testing.assert_allclose(probabilities, alone.probabilities, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(labels, alone.labels)
    assert sum(run.sizes) == sum(len(images) for images in requests)
    assert len(run.sizes) < len(requests)  # coalesced
    assert max(run.sizes) <= 32


async def test_model_version_predict_goes_through_the_batcher(model):
    requests = mixed_requests(50, seed=1)
    answers = await asyncio.gather(*(model.predict(images) for images in requests))
    for images, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer.labels, model.predict_blocking(images).labels)


async def test_a_request_larger_than_a_batch_runs_alone_unsplit(model, executor):
    run = CountingRun(model)
    queue = batcher(run, executor, max_images=4, concurrency=1)
    big, small = mixed_requests(1)[0].repeat(2, axis=0)[:6], mixed_requests(1, seed=3)[0][:1]
    run.release.clear()  # hold the first call so that the rest queue behind it
    first = asyncio.ensure_future(queue.predict(small))
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(queue.predict(images)) for images in (big, small, small)]
    await asyncio.sleep(0.01)
    run.release.set()
    await asyncio.gather(first, *rest)
    assert run.sizes == [1, 6, 2]


async def test_a_failed_call_fails_only_its_own_batch(model, executor):
    run = CountingRun(model, fail_on_size=3)
    queue = batcher(run, executor, max_images=3, concurrency=1)
    run.release.clear()
    first = asyncio.ensure_future(queue.predict(np.zeros((1, 28, 28), np.uint8)))
    await asyncio.sleep(0.01)
    doomed = [asyncio.ensure_future(queue.predict(np.zeros((1, 28, 28), np.uint8)))
              for _ in range(3)]
    spared = asyncio.ensure_future(queue.predict(np.zeros((2, 28, 28), np.uint8)))
    await asyncio.sleep(0.01)
    run.release.set()
    results = await asyncio.gather(first, *doomed, spared, return_exceptions=True)
    assert run.sizes == [1, 3, 2]
    assert all(isinstance(result, RuntimeError) for result in results[1:4])
    assert len(results[0][1]) == 1 and len(results[4][1]) == 2


async def test_cancelled_requests_leave_the_queue(model, executor):
    run = CountingRun(model)
    queue = batcher(run, executor, max_images=64, concurrency=1)
    run.release.clear()
    first = asyncio.ensure_future(queue.predict(np.zeros((1, 28, 28), np.uint8)))
    await asyncio.sleep(0.01)
    gone = asyncio.ensure_future(queue.predict(np.zeros((5, 28, 28), np.uint8)))
    kept = asyncio.ensure_future(queue.predict(np.zeros((2, 28, 28), np.uint8)))
    await asyncio.sleep(0)
    gone.cancel()
    run.release.set()
    await asyncio.gather(first, kept)
    assert run.sizes == [1, 2]


async def test_a_delay_gathers_requests_into_one_call(model, executor):
    run = CountingRun(model)
    queue = batcher(run, executor, max_images=64, max_delay_s=0.5, concurrency=1)
    requests = mixed_requests(5, seed=2)
    tasks = []
    for images in requests:
        tasks.append(asyncio.ensure_future(queue.predict(images)))
        await asyncio.sleep(0)  # each request is queued before the next is sent
    await asyncio.gather(*tasks)
    assert run.sizes == [sum(len(images) for images in requests)]


class ThreadRecordingRun(CountingRun):
    """Also records which thread ran each call, and the most calls that ran at once."""

    def __init__(self, model):
        super().__init__(model)
        self.threads = []
        self.running = self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, images):
        self.threads.append(threading.current_thread())
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().__call__(images)
        finally:
            with self._lock:
                self.running -= 1


def predict_on_caller_thread(queue: Batcher, images, loop) -> tuple:
    """What the native front door does for a lone call: one pass through the coroutine, on a
    thread of its own, expecting no suspension."""
    with on_caller_thread(loop):
        coroutine = queue.predict(images)
        try:
            coroutine.send(None)
        except StopIteration as done:
            return done.value
    coroutine.close()
    raise AssertionError("the prediction suspended on the caller thread")


async def test_an_idle_version_predicts_on_the_callers_thread(model, executor):
    run = ThreadRecordingRun(model)
    queue = batcher(run, executor, concurrency=1, inline_max_images=256)
    images = mixed_requests(1, seed=4)[0]
    loop = asyncio.get_running_loop()
    _, labels = await asyncio.to_thread(predict_on_caller_thread, queue, images, loop)
    np.testing.assert_array_equal(labels, model.predict_blocking(images).labels)
    assert run.threads[0] not in (threading.main_thread(), *executor._threads)
    assert not running_on_caller_thread()  # the context was only the caller thread's


async def test_a_caller_thread_waits_its_turn_behind_a_running_batch(model, executor):
    run = ThreadRecordingRun(model)
    queue = batcher(run, executor, concurrency=1)
    first, second = mixed_requests(2, seed=5)
    run.release.clear()  # the loop's batch holds the only slot
    running = asyncio.ensure_future(queue.predict(first))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(
        asyncio.to_thread(predict_on_caller_thread, queue, second, loop))
    await asyncio.sleep(0.05)
    assert not waiting.done() and run.sizes == []  # it queued rather than run beside
    run.release.set()
    await running
    _, second_labels = await waiting
    np.testing.assert_array_equal(second_labels, model.predict_blocking(second).labels)
    assert run.sizes == [len(first), len(second)] and run.most_at_once == 1
    assert all(thread in executor._threads for thread in run.threads)  # both on the loop's side


async def test_a_request_queued_behind_a_caller_thread_run_waits_for_it(model, executor):
    run = ThreadRecordingRun(model)
    queue = batcher(run, executor, concurrency=1)
    first, second = mixed_requests(2, seed=6)
    run.release.clear()  # the caller thread's run holds the only slot
    loop = asyncio.get_running_loop()
    on_thread = asyncio.ensure_future(
        asyncio.to_thread(predict_on_caller_thread, queue, first, loop))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(queue.predict(second))
    await asyncio.sleep(0.05)
    assert not queued.done() and run.sizes == []
    run.release.set()
    await on_thread
    await queued
    assert run.sizes == [len(first), len(second)]
    assert run.most_at_once == 1  # one after the other, never side by side
