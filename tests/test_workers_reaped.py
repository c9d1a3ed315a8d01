"""The supervisor never signals a worker it has reaped: the kernel may by then have given its
pid to another process, which a SIGKILL meant for the worker would kill. A replacement that
dies in start-up is one line saying how, and a worker killed by SIGBUS on a full /dev/shm is
told so."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from serving.workers import RESTART_INTERVAL_S
from tests.conftest import held_port
from tests.server_process import children, held_in_read, server_process

# fmnist-serve's supervisor, noting on stderr each signal it sends to a pid it has reaped
LAUNCHER = """
import os, sys
from serving.cli import main

supervisor, reaped = os.getpid(), set()
waitpid, kill = os.waitpid, os.kill

def noting_waitpid(pid, options):
    found, status = waitpid(pid, options)
    reaped.add(found)
    return found, status

def noting_kill(pid, signal_number):
    if os.getpid() == supervisor and pid in reaped:
        print(f"signal {signal_number} sent to reaped pid {pid}", file=sys.stderr, flush=True)
    kill(pid, signal_number)

os.waitpid, os.kill = noting_waitpid, noting_kill
sys.exit(main(sys.argv[1:]))
"""


def test_a_worker_that_dies_in_start_up_is_not_signalled_once_reaped(repository_copy):
    """start() reaped a worker that died before serving (to say how it died) but kept it
    among its workers: kill_all then sent SIGKILL to its pid."""
    manifest = repository_copy / "softmax" / "1" / "model.json"
    manifest.unlink()
    os.mkfifo(manifest)  # the workers hang loading it
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "--model-repository", str(repository_copy),
         "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--workers", "2",
         "--log-format", "json"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(children(process.pid)) < 2:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        victim = children(process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        _, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1, errors
    assert f"worker {victim} died before serving: killed by SIGKILL" in errors
    assert "reaped pid" not in errors


def test_a_replacement_killed_in_start_up_is_one_line_saying_how_it_died(repository_copy):
    """A replacement that died before serving without a word (killed while it loaded: the
    OOM killer, a SIGBUS) was logged 'worker failed to start' with an empty reason, then
    'worker died'; the second line alone says what happened."""
    manifest = repository_copy / "softmax" / "1" / "model.json"
    with server_process(repository_copy, "--workers", "2", "--http-port", "0",
                        "--poll-interval", "0") as (process, logs):
        pids = logs.wait_for("workers serving")[0]["pids"]
        saved = manifest.read_bytes()
        manifest.unlink()
        os.mkfifo(manifest)  # the replacement hangs loading it
        os.kill(pids[0], signal.SIGKILL)
        with held_in_read(manifest):
            replacement = next(pid for pid in children(process.pid) if pid not in pids)
            os.kill(replacement, signal.SIGKILL)
            died = logs.wait_for("worker died; starting another", count=2)[1]
        manifest.unlink()
        manifest.write_bytes(saved)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert (died["worker_pid"], died["status"]) == (replacement, "killed by SIGKILL")
    assert [line["reason"] for line in logs.matching("worker failed to start")] == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare, to mount a small /dev/shm of its own")
def test_a_worker_killed_by_a_full_dev_shm_is_told_so(repository_copy):
    """The workers' metrics files are mapped from /dev/shm: once that file system is full
    (another process's files, a small emptyDir), a worker writing a new series dies of
    SIGBUS, and its replacements too; the log said only 'killed by SIGBUS'."""
    mounted = ("unshare", "-m", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$@"', "sh")
    with server_process(repository_copy, "--workers", "2", "--http-port", "0",
                        "--poll-interval", "0", prefix=mounted) as (process, logs):
        address = logs.wait_for("workers serving")[0]["address"]
        subprocess.run(["nsenter", "-t", str(process.pid), "-m", "dd", "if=/dev/zero",
                        "of=/dev/shm/filler", "bs=64k"], capture_output=True, timeout=10,
                       check=False)  # it fills the file system, then fails
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            deadline = time.monotonic() + 10
            while not logs.matching("worker died; starting another"):
                assert time.monotonic() < deadline, "no worker died"
                for model in ("mlp", "softmax", "baseline", "other"):  # series of their own
                    with contextlib.suppress(grpc.RpcError):
                        stub.Classify(pb.ClassifyRequest(images=[bytes(784)], model=model),
                                      timeout=2)
        subprocess.run(["nsenter", "-t", str(process.pid), "-m", "rm", "/dev/shm/filler"],
                       timeout=10, check=True)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert logs.matching("worker died; starting another")[0]["status"] == (
        "killed by SIGBUS (is /dev/shm full? the metrics files are mapped from there)")


def test_a_worker_that_served_a_while_is_replaced_at_once_and_its_death_says_so(
        model_repository):
    """Replacements are forked at most once a second per slot, counted from the last fork: a
    worker that served longer than that is replaced at once, but its death's line said
    retry_in_s=1.0, as if its clients' slot stayed empty for a second more."""
    with server_process(model_repository, "--workers", "2", "--http-port", "0",
                        "--poll-interval", "0") as (process, logs):
        victim = logs.wait_for("workers serving")[0]["pids"][0]
        time.sleep(RESTART_INTERVAL_S)  # it served over a second since it was forked
        os.kill(victim, signal.SIGKILL)
        assert logs.wait_for("worker died; starting another")[0]["retry_in_s"] == 0.0
        logs.wait_for("worker serving", timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_sigusr1_and_sigusr2_leave_the_supervisor_and_its_workers_serving(model_repository):
    """SIGUSR1 (which log rotation scripts send every process of a name, to reopen logs) killed
    the supervisor outright (status 138, not a line in the log), its workers draining away
    behind it, and ended each worker (the native server's own word then): the service was
    down. SIGUSR2 killed by default too. Every process ignores both now."""
    with server_process(model_repository, "--workers", "2", "--http-port", "0",
                        "--poll-interval", "0", "--metrics-port", str(held_port())) as (
            process, logs):
        started = logs.wait_for("workers serving")[0]
        every = children(process.pid)  # the workers and the metrics process
        assert len(every) == 3 and set(started["pids"]) < set(every)
        for pid in (process.pid, *every):  # as `pkill -USR1 -f serving` sends them
            for number in (signal.SIGUSR1, signal.SIGUSR2):
                os.kill(pid, number)
        deadline = time.monotonic() + 10  # until each was taken or dropped: by then, a default
        while any(_pending(pid) & USR_SIGNALS for pid in (process.pid, *every)):  # action ended
            assert time.monotonic() < deadline, "SIGUSR1 or SIGUSR2 still pending after 10 s"
            time.sleep(0.01)
        with grpc.insecure_channel(started["address"]) as channel:
            assert pb_grpc.ClassifierStub(channel).Classify(
                pb.ClassifyRequest(images=[bytes(784)]), timeout=10).results
        assert process.poll() is None and children(process.pid) == every
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


USR_SIGNALS = 1 << signal.SIGUSR1 - 1 | 1 << signal.SIGUSR2 - 1  # in /proc's masks


def _pending(pid: int) -> int:
    """The signals sent to process ``pid`` and not yet taken by one of its threads (Linux's
    ShdPnd, a mask); none once it has ended (a zombie's are never taken)."""
    with contextlib.suppress(FileNotFoundError):
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines())
        if status["State"].split()[0] not in "ZX":
            return int(status["ShdPnd"], 16)
    return 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_shutdown_line_names_the_signal(model_repository, workers):
    """SIGHUP stops the server as SIGTERM does (a closed terminal; or an operator expecting a
    reload): the log said only 'shutdown requested', whoever had asked."""
    with server_process(model_repository, "--workers", workers, "--http-port", "0",
                        "--poll-interval", "0") as (process, logs):
        logs.wait_for("workers serving" if workers == "2" else "serving")
        process.send_signal(signal.SIGHUP)
        assert process.wait(30) == 0
    requested = [line for line in logs.lines if line["message"] == "shutdown requested"]
    assert requested[0]["pid"] == process.pid and requested[0]["signal"] == "SIGHUP", requested
