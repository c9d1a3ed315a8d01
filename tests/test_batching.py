"""Dynamic batching: concurrent requests share onnxruntime calls, and each gets exactly its
own rows, in order, whatever its neighbours do."""

import asyncio
import threading
import time
from concurrent import futures

import numpy as np
import pytest

from serving.batching import Batcher, BatchingPolicy, InferenceExecutor
from serving.metrics import ModelMetrics
from serving.repository import load_repository
from serving.threadtasks import ThreadTask, run_here


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


# Off the event loop: the native front door's threads (serving.threadtasks), which never sleep
# waiting for the model; the thread that holds the batch slot runs the queue and resumes each
# caller.


class ThreadCalls:
    """Predictions started as the front door starts calls: each on its own thread, driven by
    ``run_here``; records every answer (or error) and the thread that delivered it."""

    def __init__(self, queue: Batcher):
        self.queue = queue
        self.answers: dict[int, object] = {}
        self.answered_on: dict[int, int] = {}
        self.tasks: dict[int, ThreadTask] = {}

    async def _predict(self, key: int, images: np.ndarray):
        try:
            self.answers[key] = await self.queue.predict(images)
        except BaseException as error:  # the test looks at it
            self.answers[key] = error
        self.answered_on[key] = threading.get_ident()

    def start(self, key: int, images: np.ndarray) -> None:
        """Returns once the call is answered or queued, as the front door's thread does."""
        task = self.tasks[key] = ThreadTask(self._predict(key, images))
        run_here(task.step)

    def start_on_thread(self, key: int, images: np.ndarray) -> threading.Thread:
        thread = threading.Thread(target=self.start, args=(key, images))
        thread.start()
        return thread


def wait_for(condition, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_off_the_loop_a_lone_request_is_answered_on_its_own_thread(model, executor):
    run = CountingRun(model)
    calls = ThreadCalls(batcher(run, executor, max_images=32, concurrency=1))
    images = mixed_requests(1)[0]
    calls.start(0, images)  # on this thread: answered before start returns
    assert calls.answered_on[0] == threading.get_ident()
    np.testing.assert_array_equal(calls.answers[0][1], model.predict_blocking(images).labels)
    assert run.sizes == [len(images)]


def test_off_the_loop_queued_requests_share_a_call_and_each_gets_its_own_rows(model, executor):
    run = CountingRun(model)
    calls = ThreadCalls(batcher(run, executor, max_images=256, concurrency=1))
    requests = mixed_requests(20, seed=4)
    run.release.clear()  # the first call holds the slot while the others queue
    first = calls.start_on_thread(0, requests[0])
    wait_for(lambda: len(run.sizes) == 0 and calls.tasks.get(0) is not None)
    time.sleep(0.02)
    for key, images in enumerate(requests[1:], start=1):
        calls.start(key, images)  # queued: returns at once, unanswered
    assert not calls.answers
    run.release.set()
    first.join(10)
    assert run.sizes == [len(requests[0]), sum(len(images) for images in requests[1:])]
    assert set(calls.answered_on.values()) == {first.ident}  # the slot's thread resumed all
    for key, images in enumerate(requests):
        probabilities, labels = calls.answers[key]
        alone = model.predict_blocking(images)
        np.testing.assert_allclose(probabilities, alone.probabilities, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(labels, alone.labels)


def test_off_the_loop_a_failed_call_fails_only_its_own_batch(model, executor):
    run = CountingRun(model, fail_on_size=3)
    calls = ThreadCalls(batcher(run, executor, max_images=3, concurrency=1))
    run.release.clear()
    first = calls.start_on_thread(0, np.zeros((1, 28, 28), np.uint8))
    time.sleep(0.05)
    for key in (1, 2, 3):
        calls.start(key, np.zeros((1, 28, 28), np.uint8))
    calls.start(4, np.zeros((2, 28, 28), np.uint8))
    run.release.set()
    first.join(10)
    wait_for(lambda: len(calls.answers) == 5)
    assert run.sizes == [1, 3, 2]
    assert all(isinstance(calls.answers[key], RuntimeError) for key in (1, 2, 3))
    assert len(calls.answers[0][1]) == 1 and len(calls.answers[4][1]) == 2


def test_off_the_loop_a_cancelled_request_leaves_the_queue(model, executor):
    run = CountingRun(model)
    calls = ThreadCalls(batcher(run, executor, max_images=64, concurrency=1))
    run.release.clear()
    first = calls.start_on_thread(0, np.zeros((1, 28, 28), np.uint8))
    time.sleep(0.05)
    calls.start(1, np.zeros((5, 28, 28), np.uint8))
    calls.start(2, np.zeros((2, 28, 28), np.uint8))
    calls.tasks[1].cancel()  # what the front door does when the call ends
    run.release.set()
    first.join(10)
    assert run.sizes == [1, 2]
    assert isinstance(calls.answers[1], asyncio.CancelledError)
    assert len(calls.answers[2][1]) == 2


def test_off_the_loop_many_threads_at_once_each_get_their_own_rows(model, executor):
    run = CountingRun(model)
    calls = ThreadCalls(batcher(run, executor, max_images=16, concurrency=2))
    requests = mixed_requests(300, seed=5)
    with futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(calls.start, range(len(requests)), requests))
    wait_for(lambda: len(calls.answers) == len(requests))
    for key, images in enumerate(requests):
        np.testing.assert_array_equal(calls.answers[key][1], model.predict_blocking(images).labels)
    assert sum(run.sizes) == sum(len(images) for images in requests)
    assert max(run.sizes) <= 16


def test_off_the_loop_a_delay_gathers_requests_into_one_call(model, executor):
    run = CountingRun(model)
    requests = mixed_requests(5, seed=2)
    total = sum(len(images) for images in requests)
    calls = ThreadCalls(batcher(run, executor, max_images=total, max_delay_s=5.0, concurrency=1))
    first = calls.start_on_thread(0, requests[0])  # holds the slot, waiting for a full batch
    time.sleep(0.05)
    for key, images in enumerate(requests[1:], start=1):
        calls.start(key, images)
    first.join(10)  # the batch is full long before the delay ends
    assert run.sizes == [total]
    assert len(calls.answers) == len(requests)
