"""``timeout=`` on each call of the Python API, beside the client's own: a notebook that waits
longer for the whole test set, or less for a health-like ListModels, than for the rest."""

import contextlib
import os
import signal
import threading
import time

import grpc
import pytest

from serving.client.api import ClassifierClient, ClassifierError
from tests.server_process import server_process

CALLS = {
    "classify": lambda client, images, **timeout: client.classify(images[:2], **timeout),
    "classify_batches": lambda client, images, **timeout: list(
        client.classify_batches([images[:2]], **timeout)),
    "list_models": lambda client, images, **timeout: client.list_models(**timeout),
    "get_model": lambda client, images, **timeout: client.get_model("mlp", **timeout),
    "max_request_images": lambda client, images, **timeout: client.max_request_images(
        **timeout),
}


@pytest.fixture(scope="module")
def paused_server(model_repository):
    """``(target, pause)``: a server process, and ``pause(seconds)``, a context in which it is
    stopped (SIGSTOP, its connections open: a hung server) and that lets it go on
    ``seconds`` after it began (None: at its end)."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0") as (process,
                                                                                  logs):
        @contextlib.contextmanager
        def pause(seconds: float | None = None):
            os.kill(process.pid, signal.SIGSTOP)
            timer = threading.Timer(seconds or 0, os.kill, (process.pid, signal.SIGCONT))
            try:
                if seconds is not None:
                    timer.start()
                yield
            finally:
                timer.cancel()
                os.kill(process.pid, signal.SIGCONT)

        yield logs.wait_for("serving")[0]["address"], pause


@pytest.mark.parametrize("call", CALLS)
def test_a_calls_timeout_that_passes_is_one_line_deadline_exceeded(paused_server, test_set,
                                                                   call):
    """`client.classify(images, timeout=0.5)` was a TypeError (only the client had one): a call
    that had to give up sooner needed a client of its own. Each method takes it, and a
    deadline that passes is the one-line ClassifierError DEADLINE_EXCEEDED."""
    target, pause = paused_server
    with ClassifierClient(target, timeout=30) as client:
        client.list_models()  # connected before the server hangs
        with pause(), pytest.raises(ClassifierError) as caught:
            CALLS[call](client, test_set[0], timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert str(caught.value).startswith("DEADLINE_EXCEEDED: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("call", CALLS)
def test_a_calls_timeout_wins_over_the_clients(paused_server, test_set, call):
    """A call given a longer timeout than its client's waits that long (classify_batches'
    timeout bounded the whole stream, and each answer was still waited for only the client's
    timeout); ``timeout=None`` waits with no limit, as for the client."""
    target, pause = paused_server
    with ClassifierClient(target, timeout=0.2) as client:
        client.list_models()
        for timeout in (30, None):
            with pause(1.0):  # the server answers a second late: past the client's timeout
                assert CALLS[call](client, test_set[0], timeout=timeout)


@pytest.mark.parametrize("timeout", [0, -1, "soon"])
def test_a_calls_timeout_is_checked_as_the_clients(target, test_set, timeout):
    with ClassifierClient(target) as client, pytest.raises(ValueError, match=r"^timeout: .* \(None:"
                                                           r" no limit\)$"):
        client.classify(test_set[0][:1], timeout=timeout)


def test_a_streams_timeout_counts_from_each_request_sent_not_from_the_callers_batches(target,
                                                                                      test_set):
    """classify_batches waited for an answer from the moment the caller asked for it: a
    generator that took longer than the timeout to make its next batch (read from disk,
    decoded) failed DEADLINE_EXCEEDED "no answer in 1 s" while the server had nothing to
    answer yet. The clock of an answer starts once its request has gone."""
    def slow_batches():
        for start in (0, 10):
            time.sleep(1.5)  # making the batch: longer than the timeout
            yield test_set[0][start : start + 10]

    with ClassifierClient(target, timeout=1) as client:
        assert [len(answer) for answer in client.classify_batches(slow_batches())] == [10, 10]
