"""A worker that hangs is killed and replaced; workers that only look silent are not: stopped
with their supervisor, or draining (serving.workers, the heartbeats of serving.worker_process).
"""

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import grpc
from test_metrics import scrape as scrape_metrics
from test_workers import (
    calls_over_connections,
    connections_held,
    held_requests,
    port_of,
    running_workers,
    workers,
)

from fashion_mnist.v1 import classifier_pb2_grpc as classifier_pb_grpc
from serving.workers import HUNG_AFTER_S
from tests.server_process import children

__all__ = ["workers"]  # the fixture this module's tests take


def test_a_hung_worker_is_killed_and_replaced(workers):
    """A worker that stopped running (SIGSTOP here; a thread holding its GIL alike) held its
    clients' connections unanswered for good: once silent for HUNG_AFTER_S it is killed, and
    replaced like any that dies, while the other worker serves on."""
    _, logs, started, _ = workers
    target, pids = started["address"], started["pids"]
    victim, survivor = pids
    os.kill(victim, signal.SIGSTOP)
    hung = logs.wait_for("worker hung; killing it", timeout=HUNG_AFTER_S + 30)[0]
    assert hung["worker_pid"] == victim and hung["silent_s"] >= HUNG_AFTER_S  # rounded to 0.1 s
    died = logs.wait_for("worker died; starting another")[0]
    assert (died["worker_pid"], died["status"]) == (victim, "killed by SIGKILL")
    replacement = logs.wait_for("worker serving")[0]["worker_pid"]
    assert replacement not in pids and len(logs.matching("worker hung; killing it")) == 1
    calls_over_connections(target, connections=4, per_connection=2)
    os.kill(survivor, 0)  # never silent: still the same process


def test_a_hung_metrics_process_is_killed_and_replaced(workers):
    """A stopped metrics process (SIGSTOP here; a scrape thread holding its GIL alike) left
    every scrape hanging until its scraper gave up, for good, with no log line: once silent
    for HUNG_AFTER_S it is killed and replaced, and the port answers scrapes again."""
    process, logs, started, metrics_port = workers
    victim = next(pid for pid in children(process.pid) if pid not in started["pids"])
    os.kill(victim, signal.SIGSTOP)
    hung = logs.wait_for("metrics process hung; killing it", timeout=HUNG_AFTER_S + 30)[0]
    assert hung["metrics_pid"] == victim and hung["silent_s"] >= HUNG_AFTER_S
    died = logs.wait_for("metrics process died; starting another")[0]
    assert (died["metrics_pid"], died["status"]) == (victim, "killed by SIGKILL")
    samples = scrape_metrics(metrics_port)  # the replacement answers on the same port
    assert any(name == "fmnist_model_info" for name, _ in samples)
    assert not logs.matching("worker hung; killing it")

def test_workers_stopped_with_their_supervisor_are_not_taken_for_hung(workers):
    """Ctrl-Z, a paused container, a frozen cgroup stop the supervisor with its workers: once
    they all run again, the supervisor read the heartbeats before the workers had stamped
    them anew, and killed workers that were not hung."""
    process, logs, started, _ = workers
    target, pids = started["address"], started["pids"]
    with _stopped([process.pid, *pids]):  # the supervisor first: it never sees them stop
        time.sleep(HUNG_AFTER_S + 1)  # the thing under test: a pause past HUNG_AFTER_S
        turns = _loop_turns(process.pid)
        os.kill(process.pid, signal.SIGCONT)  # the supervisor runs before them
        _wait_for_turns(process.pid, turns + 1)  # its first read of their stale heartbeats
    hung = logs.matching("worker hung; killing it")  # said by now, or caught at the end
    assert not hung, hung
    calls_over_connections(target, connections=4, per_connection=2)
    _wait_for_turns(process.pid, _loop_turns(process.pid) + 2)  # a whole turn after them
    for pid in pids:
        os.kill(pid, 0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert not [line for line in logs.all_lines() if line["message"] == "worker hung; killing it"]


def test_a_worker_draining_on_its_own_sigterm_gets_its_grace_period(model_repository):
    """A worker told to stop (by an operator, an OOM killer's warning) beats no more while it
    drains: it was killed as hung after HUNG_AFTER_S, cutting its calls short of the grace;
    and again when the supervisor had been paused meanwhile (its pause had stamped every
    worker "now", the draining one's stamp ahead too)."""
    with running_workers(model_repository, "--grace-period", str(HUNG_AFTER_S + 10)) as (
            process, logs, started, _):
        target, pids = started["address"], started["pids"]
        hold = threading.Event()
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        with grpc.insecure_channel(target, options=options) as channel:
            try:
                stub = classifier_pb_grpc.ClassifierStub(channel)
                stream = stub.ClassifyStream(held_requests(hold))
                next(stream)  # a call in flight holds the drain
                victim = next(pid for pid in pids if connections_held(pid, port_of(target)))
                os.kill(victim, signal.SIGTERM)
                logs.wait_for("draining")
                with _stopped([process.pid]):
                    time.sleep(3)  # the thing under test: a pause past READER_PAUSE_S
                time.sleep(HUNG_AFTER_S)  # the thing under test: a drain's silence past it
                _wait_for_turns(process.pid, _loop_turns(process.pid) + 2)  # a read after it
            finally:
                hold.set()
            assert len(list(stream)) == 0  # ended in time, by its client
        died = logs.wait_for("worker died; starting another")[0]
        assert (died["worker_pid"], died["status"]) == (victim, "exit 0")
        assert not logs.matching("worker hung; killing it")  # which it would have said before


@contextlib.contextmanager
def _stopped(pids: list[int]):
    """Stops ``pids`` (SIGSTOP) in turn; whatever happens, continues those still alive."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _loop_turns(supervisor: int) -> int:
    """How many times the supervisor (one thread) has blocked (Linux): its loop blocks once a
    turn, in select() for up to a second, once it has read the heartbeats."""
    return next(int(line.split()[1])
                for line in Path(f"/proc/{supervisor}/status").read_text().splitlines()
                if line.startswith("voluntary_ctxt_switches:"))


def _wait_for_turns(supervisor: int, turns: int, within_s: float = 30) -> None:
    """Waits until the supervisor's loop has blocked ``turns`` times, where a sleep guessed how
    long a turn takes on a busy machine (too short a guess let a wrong kill go unseen)."""
    deadline = time.monotonic() + within_s
    while _loop_turns(supervisor) < turns:
        assert time.monotonic() < deadline, f"the supervisor did not turn in {within_s} s"
        time.sleep(0.01)
