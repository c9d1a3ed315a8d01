"""Dynamic batching: concurrent requests share onnxruntime calls, each gets exactly its own
rows, in order, whatever its neighbours do; callers lead batches on their own threads (how
leaders hand their slots on: tests/test_batching_leaders.py)."""

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime
import pytest

from serving.batching import Batcher, BatchingPolicy, BatchRunError
from serving.errors import Cancelled, DeadlineExceeded
from serving.metrics import ModelMetrics
from serving.pipeline import Call


@pytest.fixture(scope="module")
def session(model_repository):
    return onnxruntime.InferenceSession(model_repository / "mlp/2/model.onnx")


class CountingRun:
    """The model's real run, recording the size of every call it gets and the thread that
    made it; ``hold()`` keeps the next calls waiting until ``release``."""

    def __init__(self, session, fail_on_size: int = -1):
        self.session, self.fail_on_size = session, fail_on_size
        self.sizes: list[int] = []
        self.threads: list[str] = []
        self.running = threading.Semaphore(0)  # released as each call starts
        self.release = threading.Event()
        self.release.set()

    def hold(self) -> None:
        self.release.clear()

    def __call__(self, images):
        self.running.release()
        self.release.wait(10)
        self.sizes.append(len(images))
        self.threads.append(threading.current_thread().name)
        if len(images) == self.fail_on_size:
            raise RuntimeError("onnxruntime failed")
        probabilities, labels = self.session.run(["probabilities", "label"], {"images": images})
        return probabilities, labels

    def expected(self, images):
        return self.session.run(["probabilities", "label"], {"images": images})


def batcher(run, **policy) -> Batcher:
    return Batcher(run, BatchingPolicy(**policy), ModelMetrics("test", 1, "0" * 64))


def mixed_requests(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(1, 9)), 28, 28), dtype=np.uint8)
            for _ in range(count)]


def occupy(queue: Batcher, run: CountingRun, slots: int, pool: ThreadPoolExecutor) -> list:
    """Takes every slot with a held call; returns their futures."""
    run.hold()
    held = [pool.submit(queue.predict, np.zeros((1, 28, 28), np.uint8)) for _ in range(slots)]
    for _ in range(slots):
        assert run.running.acquire(timeout=10)
    return held


def wait_until_queued(queue: Batcher, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(queue._waiting) < count:
        assert time.monotonic() < deadline, "requests did not queue"
        time.sleep(0.001)


def test_a_lone_request_runs_on_the_callers_own_thread(session):
    run = CountingRun(session)
    queue = batcher(run, max_images=32, max_parallel=2)
    images = mixed_requests(1)[0]
    _, labels = queue.predict(images)
    np.testing.assert_array_equal(labels, run.expected(images)[1])
    assert run.threads == [threading.current_thread().name]


def test_many_threads_at_once_each_get_their_own_rows(session):
    run = CountingRun(session)
    queue = batcher(run, max_images=32, max_parallel=2)
    requests = mixed_requests(300)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(queue.predict, requests))
    for images, (probabilities, labels) in zip(requests, answers, strict=True):
        expected_probabilities, expected_labels = run.expected(images)
        np.testing.assert_allclose(probabilities, expected_probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(labels, expected_labels)
    assert sum(run.sizes) == sum(len(images) for images in requests)
    assert max(run.sizes) <= 32
    assert queue._running == 0 and not queue._waiting


def test_requests_arriving_while_every_slot_is_busy_share_one_call(session):
    run = CountingRun(session)
    queue = batcher(run, max_images=64, max_parallel=1)
    requests = mixed_requests(10, seed=1)
    with ThreadPoolExecutor(16) as pool:
        held = occupy(queue, run, 1, pool)
        waiting = [pool.submit(queue.predict, images) for images in requests]
        wait_until_queued(queue, len(requests))
        run.release.set()
        held[0].result(10)
        answers = [future.result(10) for future in waiting]
    assert run.sizes == [1, sum(len(images) for images in requests)]
    for images, (_, labels) in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(labels, run.expected(images)[1])


def test_a_request_larger_than_a_batch_runs_alone_unsplit(session):
    run = CountingRun(session)
    queue = batcher(run, max_images=8, max_parallel=1)
    big, small = np.zeros((20, 28, 28), np.uint8), np.zeros((3, 28, 28), np.uint8)
    with ThreadPoolExecutor(4) as pool:
        held = occupy(queue, run, 1, pool)
        answers = [pool.submit(queue.predict, images) for images in (big, small)]
        wait_until_queued(queue, 2)
        run.release.set()
        held[0].result(10)
        assert [len(future.result(10)[1]) for future in answers] == [20, 3]
    assert run.sizes == [1, 20, 3]


def test_a_failed_call_fails_only_its_own_batch(session):
    """Each request of the failed batch gets an error of its own (one object raised on every
    thread gathered all their frames), the run's error as the cause."""
    run = CountingRun(session, fail_on_size=5)
    queue = batcher(run, max_images=5, max_parallel=1)
    with ThreadPoolExecutor(4) as pool:
        held = occupy(queue, run, 1, pool)
        doomed = [pool.submit(queue.predict, np.zeros((size, 28, 28), np.uint8))
                  for size in (2, 3)]
        wait_until_queued(queue, 2)
        fine = pool.submit(queue.predict, np.zeros((2, 28, 28), np.uint8))
        wait_until_queued(queue, 3)
        run.release.set()
        held[0].result(10)
        errors = [future.exception(10) for future in doomed]
        assert len(fine.result(10)[1]) == 2
    assert queue._running == 0
    assert all(isinstance(error, BatchRunError) for error in errors), errors
    assert "RuntimeError: onnxruntime failed" in str(errors[0])
    assert errors[0] is not errors[1] and errors[0].__cause__ is errors[1].__cause__
    for error in errors:  # its own thread's frames only
        frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
        assert frames.count("predict") == 1, frames


@pytest.mark.parametrize(("ended", "error"), [
    (Call("/m", deadline=0.0), DeadlineExceeded),
    (Call("/m", is_active=lambda: False), Cancelled),
])
def test_a_request_whose_call_ended_is_dropped_before_it_is_computed(session, ended, error):
    run = CountingRun(session)
    queue = batcher(run, max_images=64, max_parallel=1)
    with ThreadPoolExecutor(4) as pool:
        held = occupy(queue, run, 1, pool)
        dropped = pool.submit(queue.predict, np.zeros((7, 28, 28), np.uint8), ended)
        wait_until_queued(queue, 1)
        run.release.set()
        held[0].result(10)
        with pytest.raises(error):
            dropped.result(10)
    assert run.sizes == [1]  # the 7 images were never computed
    assert queue._running == 0


@pytest.mark.parametrize(("how", "error"), [("deadline", DeadlineExceeded),
                                           ("cancelled", Cancelled)])
def test_a_queued_request_whose_call_ends_leaves_at_once(session, how, error):
    """Not when a batch would take it (here: never, the model is held): its call thread and
    its place under --max-concurrent-calls are freed while the batch ahead still runs."""
    run = CountingRun(session)
    queue = batcher(run, max_images=8, max_parallel=1)
    with ThreadPoolExecutor(2) as pool:
        held = occupy(queue, run, 1, pool)
        ends_at = time.monotonic() + 0.3
        call = (Call("/m", deadline=ends_at) if how == "deadline"
                else Call("/m", is_active=lambda: time.monotonic() < ends_at))
        ended = pool.submit(queue.predict, np.zeros((1, 28, 28), np.uint8), call)
        with pytest.raises(error):
            ended.result(3)
        assert not queue._waiting and queue._waiting_images == 0
        run.release.set()
        held[0].result(10)
    assert run.sizes == [1]  # the ended request was never computed


def test_slots_bound_the_calls_running_at_once(session):
    run = CountingRun(session)
    queue = batcher(run, max_images=1, max_parallel=2)
    active, most = 0, 0
    lock = threading.Lock()

    def counted(images):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.002)
        with lock:
            active -= 1
        return run(images)

    queue._run = counted
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(queue.predict, mixed_requests(64, seed=2)))
    assert most == 2


def test_a_delay_gathers_requests_into_one_call(session):
    run = CountingRun(session)
    queue = batcher(run, max_images=64, max_parallel=1, max_delay_s=0.3)
    requests = mixed_requests(4, seed=3)
    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(queue.predict, images) for images in requests]:
            future.result(10)
    assert run.sizes == [sum(len(images) for images in requests)]
