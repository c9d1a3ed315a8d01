"""Worker processes outliving a SIGKILLed supervisor, and what it leaves behind."""

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from test_workers import running_workers


@pytest.fixture
def workers(model_repository):
    with running_workers(model_repository) as running:
        yield running


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone: ENOENT, or ESRCH if it was reaped between open and read
        return False
    return "\nState:\tZ" not in status


def workers_gone(pids: list[int], timeout_s: float = 30) -> bool:
    """Whether every one of ``pids`` has ended within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_workers_do_not_outlive_a_killed_supervisor(workers):
    process, logs, started, _ = workers
    process.kill()  # SIGKILL: the supervisor cannot pass anything on
    process.wait(10)
    assert workers_gone(started["pids"])
    assert len(logs.wait_for("stopped", count=2)) == 2  # each worker drained and stopped
    shutil.rmtree(started["metrics_dir"])  # a server started within a minute keeps it


def test_the_next_server_removes_what_a_killed_supervisor_left(model_repository):
    """The metrics directory of a SIGKILLed supervisor stayed in /dev/shm for good (this
    machine had 14 of them); the next server removes those no process holds."""
    with running_workers(model_repository) as (process, _, started, _):
        left = Path(started["metrics_dir"])
        process.kill()
        process.wait(10)
    workers_gone(started["pids"])  # its workers drain, then let go of the directory
    young = Path(tempfile.mkdtemp(prefix="fmnist-metrics-", dir=left.parent))  # not yet held
    held = Path(tempfile.mkdtemp(prefix="fmnist-metrics-", dir=left.parent))
    long_ago = time.time() - 3600
    for path in (left, held):
        os.utime(path, (long_ago, long_ago))
    holder = os.open(held, os.O_RDONLY)  # a live server's
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with running_workers(model_repository):
            assert not left.exists()
            assert young.exists() and held.exists()
    finally:
        os.close(holder)
    for path in (young, held):
        shutil.rmtree(path)
