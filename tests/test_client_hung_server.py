"""A server that stops answering in the middle of a stream (hung, or gone without a word:
a network that dropped its packets): the client gives up after its timeout per answer; one
that dies: the client says so."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from serving.client.api import ClassifierClient
from serving.client.security import ChannelSecurity
from tests.server_process import server_process


def test_a_stream_whose_server_stops_answering_fails_after_the_timeout(model_repository,
                                                                      test_set):
    """`fmnist score --timeout T` ("seconds to wait for each answer") waited N times T for a
    stream of N batches: 10,000 batches of 1 image waited 5.5 hours at --timeout 2, and the
    Python client's classify_batches for ever. Now each answer is waited for T seconds."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0") as (process,
                                                                                  logs):
        target = logs.wait_for("serving")[0]["address"]

        def batches():
            yield test_set[0][:1]
            os.kill(process.pid, signal.SIGSTOP)  # hung from here on, connection open
            for start in range(1, 1000):
                yield test_set[0][start:start + 1]

        error, closed_while_hung = _stream_to_a_server_that_hangs(process, target, batches())
    assert closed_while_hung, error  # not after 999 times the timeout, nor once resumed
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert error.details() == "no answer in 1 s (the timeout per answer)"


def test_a_stream_whose_server_dies_is_said_so(model_repository, test_set):
    """A server killed mid-stream: `fmnist score` said only "UNAVAILABLE: Stream removed
    (Socket closed)", gRPC's words, not that the server went away."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0") as (process,
                                                                                  logs):
        target = logs.wait_for("serving")[0]["address"]
        # an answer came first: gRPC retries no more, as the CLI's stream
        error = _error_of_a_stream_stopped_by(lambda: (process.kill(), process.wait(10)),
                                              target, test_set)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    explained = ChannelSecurity().explained("UNAVAILABLE", error.details(), target)
    assert explained == (f"{error.details()} (the connection to {target} broke during the "
                         "call: did the server stop?)")


@pytest.mark.parametrize("timeout_from", ["flag", "env var"])
def test_a_call_that_gets_no_answer_says_what_waited(capsys, monkeypatch, timeout_from):
    """A server that takes the connection and never answers (hung, overloaded): `fmnist health`
    (classify, models) said only gRPC's 'DEADLINE_EXCEEDED: Deadline Exceeded', naming neither
    the address nor the --timeout that ran out, as score's stream does."""
    from serving.client import cli

    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        argv = ["health", "--target", target]
        if timeout_from == "flag":
            argv += ["--timeout", "0.5"]
        else:
            monkeypatch.setenv("FMNIST_TIMEOUT", "0.5")
        assert cli.main(argv) == 1
    waited = "--timeout 0.5" if timeout_from == "flag" else "FMNIST_TIMEOUT=0.5"
    assert capsys.readouterr().err == ("fmnist health: error: DEADLINE_EXCEEDED: Deadline "
                                       f"Exceeded (no answer from {target} in {waited} s)\n")


@pytest.mark.parametrize("grpc_server", ["native", "grpcio"])
def test_a_stream_whose_server_shuts_down_is_said_so(model_repository, test_set, grpc_server):
    """A server stopped (SIGTERM: a rollout, a restart) while `fmnist score` streams to it ends
    the stream when its grace period does: the run failed saying only gRPC's "UNAVAILABLE:
    Cancelling all calls", not that the server shut down."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0",
                        "--grace-period", "0.5", "--grpc-server", grpc_server) as (process, logs):
        target = logs.wait_for("serving")[0]["address"]
        # mid-stream, the stream kept open (an image each 0.1 s) until the grace period ends it
        error = _error_of_a_stream_stopped_by(process.terminate, target, test_set, pace_s=0.1)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE,
                                               "Cancelling all calls")
    assert ChannelSecurity().explained("UNAVAILABLE", error.details(), target) == (
        f"Cancelling all calls (the server at {target} shut down, and its grace period ended "
        "this call before it was done)")


def _error_of_a_stream_stopped_by(stop, target, test_set, pace_s=0.0) -> grpc.RpcError:
    """Streams one image, waits for its answer, calls ``stop`` and streams on (at most 99 more
    images, one each ``pace_s``): the error the stream ends with (it must end in one)."""
    answered = threading.Event()

    def batches():
        yield test_set[0][:1]
        answered.wait(10)
        stop()
        for start in range(1, 100):
            time.sleep(pace_s)
            yield test_set[0][start:start + 1]

    with ClassifierClient(target, timeout=10) as client, pytest.raises(grpc.RpcError) as caught:
        for _ in client.classify_batches(batches()):
            answered.set()
    return caught.value


def test_a_stream_whose_server_stops_before_its_end_fails_after_the_timeout(model_repository,
                                                                          test_set):
    """Every answer in, the stream waits for the server to end it: a server hung then is
    given the timeout too, as for an answer (not for ever)."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0") as (process,
                                                                                  logs):
        target = logs.wait_for("serving")[0]["address"]
        answered = threading.Event()

        def batches():
            yield test_set[0][:1]
            answered.wait(10)
            os.kill(process.pid, signal.SIGSTOP)  # hung before it ends the stream: its
            _wait_until_stopped(process.pid)  # threads stopped before the stream's end is sent

        error, closed_while_hung = _stream_to_a_server_that_hangs(
            process, target, batches(), on_answer=lambda _count: answered.set())
    assert closed_while_hung, error
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error


def _wait_until_stopped(pid: int) -> None:
    """Until every thread of ``pid`` is stopped (SIGSTOP takes effect a moment after kill()
    returns: a thread at work on the other core may first answer what reaches it)."""
    for _ in range(500):
        states = [(task / "stat").read_text().rpartition(")")[2].split()[0]
                  for task in Path(f"/proc/{pid}/task").iterdir()]
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} not stopped: thread states {states}")


def test_a_score_whose_server_hangs_mid_stream_says_what_waited(model_repository, tmp_path):
    """`fmnist score` whose server hung mid-stream said "DEADLINE_EXCEEDED: no answer in 1 s
    (the timeout per answer)", naming neither the address nor where the 1 s came from, where a
    unary call's line names both: the same words for both."""
    csv_path = tmp_path / "predictions.csv"
    with server_process(model_repository, "--workers", "1", "--http-port", "0") as (server,
                                                                                  logs):
        target = logs.wait_for("serving")[0]["address"]
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.client", "score", "--target", target, "--batch-size",
             "1", "--csv", str(csv_path)], env={**os.environ, "FMNIST_TIMEOUT": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):  # mid-way through the stream's 10,000 answers
                if csv_path.exists() and len(csv_path.read_text().splitlines()) > 10:
                    break
                time.sleep(0.1)
            os.kill(server.pid, signal.SIGSTOP)
            err = process.communicate(timeout=30)[1]
        finally:
            os.kill(server.pid, signal.SIGCONT)
            process.kill()
    assert process.returncode == 1, err
    assert re.fullmatch(rf"fmnist score: error: DEADLINE_EXCEEDED: no answer from "
                        rf"{re.escape(target)} in FMNIST_TIMEOUT=1 s \(the timeout per answer\); "
                        r"ended after (\d+) of 10000 images \(--csv: \1 rows written\)\n", err), err


def test_a_client_whose_stream_got_no_answer_closes_while_the_server_is_hung(model_repository,
                                                                            test_set):
    """Once a stream's answer had not come, the client's close (its `with` block's end) waited
    for as long as the server stayed hung: gRPC's channel waits for the writes queued to it,
    and `fmnist score` never ended. It closes without waiting for them."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0") as (process,
                                                                                  logs):
        target = logs.wait_for("serving")[0]["address"]

        def hang_after_20(count: int) -> None:  # small batches, many queued when it hangs
            if count == 20:
                os.kill(process.pid, signal.SIGSTOP)

        error, closed_while_hung = _stream_to_a_server_that_hangs(
            process, target, (test_set[0][start : start + 1] for start in range(10000)),
            on_answer=hang_after_20)
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert closed_while_hung


def _stream_to_a_server_that_hangs(process, target, batches, on_answer=lambda _count: None
                                   ) -> tuple[grpc.RpcError | None, bool]:
    """Streams ``batches`` to ``target`` with a timeout of 1 s per answer, ``on_answer(count)``
    after each answer, on a thread of its own, while the caller's SIGSTOP hangs ``process``;
    resumes ``process`` after 30 s (thirty timeouts; a client that waits for a hung server
    waits that long) or once the client is closed: the stream's error (None if it ended
    without one), and whether the client was closed while the server was still hung."""
    outcome = []

    def stream():
        with ClassifierClient(target, timeout=1) as client:
            try:
                for count, _ in enumerate(client.classify_batches(batches), 1):
                    on_answer(count)
            except grpc.RpcError as error:
                outcome.append(error)

    waiting = threading.Thread(target=stream, daemon=True)
    try:
        waiting.start()
        waiting.join(30)
        closed_while_hung = not waiting.is_alive()
    finally:
        os.kill(process.pid, signal.SIGCONT)
    waiting.join(30)
    return (outcome[0] if outcome else None), closed_while_hung
