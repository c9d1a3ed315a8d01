"""Faults under load, on a server process: SIGTERM while 32 clients call in a closed loop
(every accepted call answered, health NOT_SERVING before the first refusal, exit 0), and a
worker process killed with SIGKILL under load (replaced, the other worker untouched, every
client answered again right after), and workers out of file descriptors (replaced: gRPC C++
1.51 never accepts again on a port whose accept failed). A damaged model repository and
requests past the limits are tests/test_faults.py's.
"""

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from serving import native
from tests.fault_requests import IMAGES, classify_request
from tests.server_process import children, server_process

# --- SIGTERM under load ----------------------------------------------------------------------

SIGTERM_CLIENTS = 32


async def _drive_until_refused(target: str, process: subprocess.Popen) -> tuple[list, Counter]:
    """Runs the clients until each is refused, sending SIGTERM once calls have been answered;
    returns the ordered events (health changes and first refusals) and every call's outcome."""
    events: list[str] = []
    outcomes: Counter = Counter()
    answered = asyncio.Event()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def watch_health():
            try:
                async for update in health.Watch(health_pb2.HealthCheckRequest()):
                    events.append(health_pb2.HealthCheckResponse.ServingStatus.Name(update.status))
            except grpc.aio.AioRpcError:
                events.append("health stream closed")

        async def client():
            while True:
                try:
                    response = await stub.Classify(classify_request(), timeout=30)
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1
                    events.append(error.code().name)
                    return
                assert len(response.results) == len(IMAGES)
                outcomes["OK"] += 1
                if outcomes["OK"] >= 4 * SIGTERM_CLIENTS:
                    answered.set()

        watcher = asyncio.create_task(watch_health())
        clients = [asyncio.create_task(client()) for _ in range(SIGTERM_CLIENTS)]
        await asyncio.wait_for(answered.wait(), 60)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*clients), 60)
        await asyncio.wait_for(watcher, 60)
    return events, outcomes


def test_sigterm_under_load_answers_every_accepted_call_and_exits_0(model_repository,
                                                                    grpc_server):
    with server_process(model_repository, "--grace-period", "30", "--workers", "2",
                        "--grpc-server", grpc_server) as (process, logs):
        # both workers: a connection may reach either, and one still starting is NOT_SERVING
        target = logs.wait_for("workers serving")[0]["address"]
        events, outcomes = asyncio.run(_drive_until_refused(target, process))
        assert process.wait(60) == 0
    # Every call either got its answer or was refused as the server went away: none was
    # accepted and then dropped, none failed otherwise.
    assert set(outcomes) == {"OK", "UNAVAILABLE"}, outcomes
    assert outcomes["UNAVAILABLE"] == SIGTERM_CLIENTS
    assert outcomes["OK"] >= 4 * SIGTERM_CLIENTS
    # Health said NOT_SERVING before the first call was refused.
    assert events[0] == "SERVING"
    assert "NOT_SERVING" in events
    assert events.index("NOT_SERVING") < events.index("UNAVAILABLE"), events[:5]


# --- a worker process killed ------------------------------------------------------------------

KILL_CLIENTS = 8
CALLS_AFTER_KILL = 30


async def _load_through_a_kill(target: str, victim: int) -> list[list[str]]:
    """Clients on separate connections call until the victim has been killed and each has
    made CALLS_AFTER_KILL more calls; returns each client's outcomes in order."""
    killed = asyncio.Event()
    answered = Counter()

    async def client(index: int) -> list[str]:
        outcomes = []
        after_kill = 0
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            while after_kill < CALLS_AFTER_KILL:
                try:
                    response = await stub.Classify(classify_request(), timeout=30,
                                                   wait_for_ready=True)
                    assert len(response.results) == len(IMAGES)
                    outcomes.append("OK")
                except grpc.aio.AioRpcError as error:
                    outcomes.append(error.code().name)
                answered[index] += 1
                if killed.is_set():
                    after_kill += 1
                await asyncio.sleep(0)
        return outcomes

    async def killer():
        while len(answered) < KILL_CLIENTS or min(answered.values()) < 10:
            await asyncio.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        killed.set()

    *outcomes, _ = await asyncio.wait_for(
        asyncio.gather(*(client(i) for i in range(KILL_CLIENTS)), killer()), 120)
    return outcomes


def test_a_killed_worker_is_replaced_and_the_others_keep_answering(model_repository):
    with server_process(model_repository, "--workers", "2",
                        "--poll-interval", "0") as (process, logs):
        started = logs.wait_for("workers serving")[0]
        workers = set(started["pids"])
        victim = min(workers)
        outcomes = asyncio.run(_load_through_a_kill(started["address"], victim))
        replaced = logs.wait_for("worker died; starting another")[0]
        for _ in range(100):  # the replacement is forked up to a second after the death
            survivors = set(children(process.pid))
            if len(survivors) == 2:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert replaced["worker_pid"] == victim
    assert victim not in survivors
    assert len(survivors) == 2
    assert workers - {victim} <= survivors  # the other worker was left alone
    counts = Counter(outcome for client in outcomes for outcome in client)
    # Only calls the dead worker had in flight fail; every client is answered again after.
    assert set(counts) <= {"OK", "UNAVAILABLE"}, counts
    assert counts["UNAVAILABLE"] <= KILL_CLIENTS
    assert all(client[-CALLS_AFTER_KILL // 2:] == ["OK"] * (CALLS_AFTER_KILL // 2)
               for client in outcomes)


# --- Out of file descriptors -----------------------------------------------------------------

ACCEPTS_NO_MORE = ("Failed accept4: Too many open files: this port accepts no more "
                   "connections; stopping")


@pytest.mark.skipif(not native.available(),
                    reason=f"native gRPC server: {native.UNAVAILABLE_REASON}")
def test_workers_out_of_file_descriptors_are_replaced_and_the_port_answers_again(
        model_repository):
    """200 idle connections to workers that may open 64 files each: their accept fails
    (EMFILE), and gRPC C++ 1.51 never accepted on that port again, while the worker went on
    looking healthy: every new connection the kernel gave it waited for good."""
    with server_process(model_repository, "--workers", "2", "--poll-interval", "0",
                        "--grace-period", "1", "--grpc-server", "native",
                        prefix=("prlimit", "--nofile=64")) as (process, logs):
        address = logs.wait_for("workers serving")[0]["address"]
        host, port = address.rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(200)]
        logs.wait_for_text(ACCEPTS_NO_MORE)  # accepted until the descriptors ran out
        for connection in idle:
            connection.close()
        for _ in range(8):  # fresh connections, each hashed to one of the workers' sockets
            with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]
                                       ) as channel:
                pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=15,
                                                           wait_for_ready=True)
        replaced = logs.wait_for("worker died; starting another")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert replaced[0]["status"] == "exit 1"  # drained, as on SIGTERM, then failed


@pytest.mark.skipif(not native.available(),
                    reason=f"native gRPC server: {native.UNAVAILABLE_REASON}")
def test_a_single_process_out_of_file_descriptors_exits_non_zero_saying_why(model_repository):
    """With --workers 1 no supervisor replaces the process that stops itself when its port
    accepts no more: it exited 0, as after a SIGTERM, and a restart-on-failure policy
    (systemd's Restart=on-failure, Docker's on-failure) left the service down. Its lines say
    why as it stops, and last."""
    with server_process(model_repository, "--workers", "1", "--poll-interval", "0",
                        "--grace-period", "1", "--http-port", "0", "--grpc-server", "native",
                        prefix=("prlimit", "--nofile=64")) as (process, logs):
        host, port = logs.wait_for("serving")[0]["address"].rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(200)]
        try:
            status = process.wait(60)
        finally:
            for connection in idle:
                connection.close()
    assert status == 1
    said = [line for line in logs.lines if line["message"] is not None]
    # the line where it starts to drain said `signal=SIGRTMIN` (the native server's word to
    # its process), as if an operator had sent it; it says why
    stop = [line for line in said if line["message"] == "shutdown requested"]
    assert stop and "accepts no more connections" in stop[0].get("cause", ""), stop
    assert said[-1]["message"] == "cannot serve", said[-3:]
    assert "accepts no more connections" in said[-1]["error"], said[-1]
    assert "file descriptors" in said[-1]["error"], said[-1]


def test_sigusr1_and_sigusr2_from_outside_leave_a_single_process_serving(model_repository):
    """The native server told its process that the port accepts no more connections with
    SIGUSR1, so one sent by an operator (to reopen logs, as for many daemons) ended a single
    process with exit 1 and a line blaming file descriptors; SIGUSR2 ended it by default."""
    with server_process(model_repository, "--workers", "1", "--poll-interval", "0",
                        "--grace-period", "1", "--http-port", "0") as (process, logs):
        address = logs.wait_for("serving")[0]["address"]
        for number in (signal.SIGUSR1, signal.SIGUSR2):
            process.send_signal(number)
        with grpc.insecure_channel(address) as channel:
            assert pb_grpc.ClassifierStub(channel).Classify(classify_request(1), timeout=10)
        # then SIGTERM, in place of a sleep: pending signals are handled lowest first, so one
        # of them heard would have ended the process (not 0) or begun its stop (not SIGTERM's)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, logs.lines[-3:]
    assert [line.get("signal") for line in logs.all_lines()
            if line["message"] == "shutdown requested"] == ["SIGTERM"]
