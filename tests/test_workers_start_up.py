"""Starting and sizing worker processes: a start report is never written after it is sent,
SIGTERM stops a server whose worker hangs in start-up, a worker that cannot start or a port in
use fails the server with one line, and the number of workers and of onnxruntime instances
follows the CPUs the process may use. Workers serving behind one port are
tests/test_workers.py's.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.worker_process import READY, StartReport, signals_held
from tests.server_process import children, held_in_read, server_process, thread_states


def test_holding_signals_over_a_fork_restores_the_mask_it_found():
    """It unblocked SIGTERM, SIGINT and SIGCHLD whatever the mask was before."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        with signals_held():
            assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before | {signal.SIGCHLD}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_a_start_report_is_never_written_after_it_is_sent():
    """Once the report is sent its descriptor is closed; the number may then belong to a
    client's socket, so a late failure must not write there."""
    read_end, write_end = os.pipe()
    report = StartReport(write_end)
    report.send(READY)
    assert os.read(read_end, 16) == READY
    reused_read, reused_write = os.pipe()  # the lowest free numbers: write_end's among them
    try:
        assert write_end in (reused_read, reused_write)
        os.set_blocking(reused_read, False)
        report.send(b"worker failed: late")
        with pytest.raises(BlockingIOError):
            os.read(reused_read, 64)
    finally:
        for fd in (read_end, reused_read, reused_write):
            os.close(fd)


def test_no_thread_of_the_libraries_the_supervisor_imports_runs_over_a_fork():
    """A fork copies only the thread that forks: a library thread holding a lock or half way
    through its work then would leave the worker inconsistent. numpy's OpenBLAS stops its
    threads before each fork, so the forking supervisor is alone at that moment."""
    code = textwrap.dedent("""
        import importlib, os
        from serving.workers import SHARED_IMPORTS
        for name in (*SHARED_IMPORTS, "granian"):
            importlib.import_module(name)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print(len(os.listdir("/proc/self/task")))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]


def test_sigterm_while_a_worker_hangs_in_start_up_stops_the_server(repository_copy):
    """A worker stuck loading (here, reading a manifest that is a FIFO nobody writes) does
    not keep the supervisor from stopping on SIGTERM: it is killed after the grace period."""
    manifest = repository_copy / "softmax" / "1" / "model.json"
    manifest.unlink()
    os.mkfifo(manifest)
    with (server_process(repository_copy, "--workers", "2",
                         "--grace-period", "1") as (process, logs), held_in_read(manifest)):
        process.send_signal(signal.SIGTERM)
        logs.wait_for("shutdown requested", timeout=10)
        assert process.wait(1 + 5 + 10) == 0  # grace, the supervisor's margin, slack
        assert logs.wait_for("workers did not stop in time; killing them")


def test_a_worker_that_dies_in_start_up_is_named_with_how_it_died(repository_copy):
    """A worker killed while it loaded (the kernel's OOM killer under a memory limit) failed
    the start with "a worker exited before serving": neither which worker nor how."""
    manifest = repository_copy / "softmax" / "1" / "model.json"
    manifest.unlink()
    os.mkfifo(manifest)  # the workers hang loading it
    with (server_process(repository_copy, "--workers", "2") as (process, logs),
          held_in_read(manifest)):
        victim = children(process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert process.wait(30) == 1
        failure = logs.wait_for("cannot serve")[0]
    assert failure["error"] == f"worker {victim} died before serving: killed by SIGKILL"


def test_sigterm_while_a_worker_is_being_forked_stops_it_at_once(model_repository, tmp_path):
    """Between fork and the worker's own handlers, a signal ran the supervisor's handler in
    the child and was lost: the worker served on until killed after the grace period. Here
    each child, right after fork, says so and sleeps, widening that window to a second."""
    forked = tmp_path / "forked"
    launcher = (
        "import os, sys, time\n"
        f"os.register_at_fork(after_in_child=lambda: (open({str(forked)!r}, 'a').close(), "
        "time.sleep(1)))\n"
        "from serving.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", launcher, "--model-repository", str(model_repository),
         "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--workers", "2",
         "--grace-period", "5", "--log-format", "json"],
        stderr=subprocess.PIPE, text=True)
    try:
        while not forked.exists():
            assert time.monotonic() - started < 30 and process.poll() is None
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)  # the supervisor passes it on to both workers
        _, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, errors
    messages = [json.loads(line)["message"] for line in errors.splitlines()]
    # a worker that lost the signal serves on, until killed after the grace period
    assert "workers did not stop in time; killing them" not in messages
    assert "workers serving" not in messages


def test_a_replacement_that_hangs_in_start_up_is_killed_and_replaced_again(repository_copy):
    """A replacement stuck loading must not leave its slot empty for ever: after
    --worker-start-timeout it is killed, and the next replacement serves once loading works."""
    manifest = repository_copy / "softmax" / "1" / "model.json"
    with server_process(repository_copy, "--workers", "2", "--http-port", "0",
                        "--poll-interval", "0", "--worker-start-timeout", "5") as (process, logs):
        pids = logs.wait_for("workers serving")[0]["pids"]  # a busy machine: 5 s to start
        saved = manifest.read_bytes()
        manifest.unlink()
        os.mkfifo(manifest)  # reading it blocks until someone writes
        os.kill(pids[0], signal.SIGKILL)
        hung = logs.wait_for("worker failed to start", timeout=30)[0]
        assert hung["reason"] == "it did not serve within 5 s; killed"
        assert hung["worker_pid"] not in pids
        manifest.unlink()
        manifest.write_bytes(saved)
        replacement = logs.wait_for("worker serving", timeout=30)[0]["worker_pid"]
        assert replacement not in (*pids, hung["worker_pid"])
        assert replacement in children(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_sigterm_stops_a_server_whose_watcher_is_stuck_reading_the_repository(
        repository_copy):
    """A version published after start-up whose manifest cannot be read (here a FIFO; a hung
    network volume alike) held the shutdown for ever: the watcher was joined without end."""
    with server_process(repository_copy, "--workers", "1", "--http-port", "0",
                        "--poll-interval", "0.2", "--grace-period", "1") as (process, logs):
        logs.wait_for("serving")
        stuck = repository_copy / "mlp" / "9"
        stuck.mkdir()
        os.mkfifo(stuck / "model.json")
        with held_in_read(stuck / "model.json"):  # by a poll of the watcher
            process.send_signal(signal.SIGTERM)
            try:
                assert process.wait(15) == 0
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 15 s after SIGTERM; its threads (tid name state "
                            f"wchan syscall): {thread_states(process.pid)}; its log: "
                            f"{logs.lines[-12:]}")
    assert logs.wait_for(
        "the repository watcher is still reading or loading the repository; left behind")


def test_replacements_that_fail_to_start_are_retried_ever_later(repository_copy):
    """A repository that changed under a running server (here the baseline's sha256) fails
    every replacement: one a second, without end, filled the log; the wait now doubles."""
    manifest = repository_copy / "baseline" / "1" / "model.json"
    with server_process(repository_copy, "--workers", "2", "--http-port", "0",
                        "--poll-interval", "0") as (process, logs):
        pids = logs.wait_for("workers serving")[0]["pids"]
        saved = manifest.read_text()
        manifest.write_text(saved.replace('"sha256": "', '"sha256": "0'))
        os.kill(pids[0], signal.SIGKILL)
        deaths = logs.wait_for("worker died; starting another", count=3, timeout=30)
        waits = [death["retry_in_s"] for death in deaths]  # left of 1, 2, 4 s from each fork
        assert waits[0] <= 1.0 and waits[1] <= 2.0 < waits[2] <= 4.0, waits
        assert len(logs.matching("worker failed to start")) == 2
        manifest.write_text(saved)
        replacement = logs.wait_for("worker serving", timeout=30)[0]["worker_pid"]
        assert replacement in children(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_a_worker_that_cannot_start_fails_the_server_with_one_line(tmp_path):
    status = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(tmp_path / "none"),
         "--port", "0", "--workers", "2"],
        capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in status.stderr.splitlines() if " INFO " not in line]
    assert status.returncode == 1
    assert errors == [f"fmnist-serve: error: model repository {tmp_path / 'none'} does not "
                      "exist or is not a directory (fmnist-train --out DIR makes one)"]


def test_a_port_in_use_fails_the_server_with_one_line(model_repository):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        status = subprocess.run(
            [sys.executable, "-m", "serving", "--model-repository", str(model_repository),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in status.stderr.splitlines() if " INFO " not in line]
    assert status.returncode == 1
    assert len(errors) == 1
    assert errors[0].startswith(f"fmnist-serve: error: cannot listen on 127.0.0.1:{port}: ")


def test_a_port_in_time_wait_after_a_one_process_server_is_free_for_workers(model_repository):
    """A one-process server (or any program) that closed a client's connection first leaves
    it in TIME_WAIT on its port for a minute: workers started there meanwhile failed with
    "cannot listen on ...: Address already in use", though nothing listened."""
    with socket.create_server(("127.0.0.1", 0)) as listener:  # SO_REUSEADDR, no SO_REUSEPORT
        client = socket.create_connection(listener.getsockname())
        listener.accept()[0].close()  # the server's side closes first: its port in TIME_WAIT
        port = listener.getsockname()[1]
    client.close()
    with server_process(model_repository, "--port", str(port), "--http-port", "0",
                        "--workers", "2", "--poll-interval", "0") as (_, logs):
        assert logs.wait_for("workers serving")[0]["address"] == f"127.0.0.1:{port}"


@pytest.mark.parametrize(("flag", "what"), [("--port", ""), ("--http-port", " for HTTP")])
def test_a_port_another_server_listens_on_with_reuse_port_fails_the_server(model_repository,
                                                                           flag, what):
    """Workers bind with SO_REUSEPORT, which lets them join any listener of the same user:
    another fmnist-serve on the port would silently share the clients."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = subprocess.run(
            [sys.executable, "-m", "serving", "--model-repository", str(model_repository),
             "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--workers", "2",
             flag, str(port)],
            capture_output=True, text=True, timeout=30, check=False)
    errors = [line for line in status.stderr.splitlines() if " INFO " not in line]
    assert status.returncode == 1
    assert errors == [f"fmnist-serve: error: cannot listen{what} on 127.0.0.1:{port}: "
                      "[Errno 98] Address already in use"]


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "50000 100000\n"}, 1),  # docker --cpus 0.5, cgroup v2
    ({"cpu.max": "max 100000\n"}, len(os.sched_getaffinity(0))),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
     len(os.sched_getaffinity(0))),
])
def test_default_workers_follow_the_cores_this_process_may_use(tmp_path, monkeypatch,
                                                               files, expected):
    """A CPU quota caps the cores under cgroup v2 and v1 alike (Docker on a v1 host, as this
    one is: read only v2's file, a 16-core host gave a 2-CPU container 16 workers)."""
    from serving import settings

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(settings, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(settings, "CGROUP_V1_CPU", tmp_path / "cpu")
    assert settings.available_cores() == expected


def test_a_process_limited_to_fewer_cpus_sizes_itself_from_them(model_repository):
    """Defaults come from the CPUs the process may use, not the host's: on one CPU of this
    host, one process and one onnxruntime call per model version at a time, so requests
    arriving while it is busy are batched (on a big host with a small CPU limit, as many
    instances as the host has cores would never batch: tests/test_batching_server.py shows
    the batching)."""
    one_cpu = str(min(os.sched_getaffinity(0)))
    with server_process(model_repository, "--poll-interval", "0",
                        prefix=("taskset", "--cpu-list", one_cpu)) as (process, logs):
        target = logs.wait_for("serving")[0]["address"]
        assert children(process.pid) == []  # a single process
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=30).config
        assert [group.count for group in config.instance_group] == [1]
