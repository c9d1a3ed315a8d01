"""Dynamic batching's leaders (a caller whose thread runs batches): one waiting out the delay
hears that its request was taken, hands its slot on once its own request is answered, and
waits, not spins, while another leader computes its request. The rest of batching is
tests/test_batching.py's."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tests.test_batching import CountingRun, batcher, mixed_requests, session, wait_until_queued

__all__ = ["session"]  # the fixture, shared with tests/test_batching.py


def test_a_leader_waiting_out_the_delay_hears_that_its_request_was_taken(session):
    """With a delay and two slots, a second leader may take the first leader's request into
    a full batch: the first kept waiting out its whole delay (and its slot), so its caller
    got the answer a whole delay late. The delay here is a minute, the first's answer given
    ten seconds after the second's (which takes milliseconds): late only if it waited."""
    run = CountingRun(session)
    queue = batcher(run, max_images=2, max_parallel=2, max_delay_s=60.0)
    first_answered = threading.Event()

    def first() -> None:
        queue.predict(np.zeros((1, 28, 28), np.uint8))
        first_answered.set()

    # a daemon: where the test fails, it may wait out the minute without holding up the run
    threading.Thread(target=first, daemon=True).start()
    wait_until_queued(queue, 1)
    deadline = time.monotonic() + 10
    while not queue._arrived._waiters:  # the first leads, waiting out the delay (CPython)
        assert time.monotonic() < deadline, "the first did not wait for a second image"
        time.sleep(0.001)
    queue.predict(np.zeros((1, 28, 28), np.uint8))  # the second: a full batch, both taken
    assert first_answered.wait(10), "the first waited out its delay, its request answered"
    assert run.sizes == [2] and queue._running == 0


def test_a_leader_hands_the_slot_on_once_its_own_request_is_answered(session):
    """A caller runs batches only until its own request is answered: the requests queued
    behind it are run by their own callers' threads, not by the leader's (which would make
    its caller wait for the model on everybody's behalf)."""
    run = CountingRun(session)
    queue = batcher(run, max_images=1, max_parallel=1)
    names = [f"caller-{index}" for index in range(4)]
    finished: dict[str, float] = {}

    def call(name: str) -> None:
        threading.current_thread().name = name
        queue.predict(np.zeros((1, 28, 28), np.uint8))
        finished[name] = time.monotonic()

    run.hold()
    threads = [threading.Thread(target=call, args=(name,)) for name in names]
    threads[0].start()
    assert run.running.acquire(timeout=10)  # caller-0 leads, held in onnxruntime
    for thread in threads[1:]:
        thread.start()
    wait_until_queued(queue, 3)  # caller-0's own request is in the call; the rest queue
    run.release.set()
    for thread in threads:
        thread.join(10)
    assert run.threads == names  # each batch of one on its own caller's thread
    assert finished["caller-0"] <= min(finished[name] for name in names[1:])


def test_a_leader_whose_request_another_leader_took_waits_instead_of_spinning(session):
    """With two slots, a caller may lead while its own request is already in the other
    leader's batch: it must hand its slot on and wait, not poll an empty queue for as long as
    that batch computes."""
    run = CountingRun(session)
    queue = batcher(run, max_images=64, max_parallel=2)
    empty_takes = 0
    take = queue._take

    def counted_take():
        nonlocal empty_takes
        batch = take()
        empty_takes += not batch
        return batch

    queue._take = counted_take
    slow = run.__call__

    def slowly(images):
        time.sleep(0.0005)
        return slow(images)

    queue._run = slowly
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(queue.predict, mixed_requests(600, seed=4)))
    assert len(answers) == 600
    assert empty_takes == 0
    assert queue._running == 0 and not queue._waiting
