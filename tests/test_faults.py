"""Faults: a damaged model repository, requests past the limits, SIGTERM under load."""

import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, namedtuple
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import local_settings, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from common.contract import MANIFEST, MODEL_FILE
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from serving import cli
from serving.errors import ResourceExhausted
from serving.pipeline import Admission
from tests.conftest import tiny_classifier

CallDetails = namedtuple("CallDetails", "method invocation_metadata")
IMAGES = np.random.default_rng(5).integers(0, 256, (8, 28, 28), dtype=np.uint8)


def _request(count: int = len(IMAGES)) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(images=[IMAGES[i % len(IMAGES)].tobytes() for i in range(count)])


# --- a damaged model repository ---------------------------------------------------------------


def _replace_model(version_dir, data: bytes) -> None:
    """Writes ``data`` as the model file with a matching sha256, so that what is wrong is the
    model itself, not its checksum."""
    (version_dir / MODEL_FILE).write_bytes(data)
    manifest = json.loads((version_dir / MANIFEST).read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (version_dir / MANIFEST).write_text(json.dumps(manifest))


def _wrong_input_shape_model() -> bytes:
    """The tiny classifier behind a uint8 [N,784] input instead of [N,28,28]."""
    model = tiny_classifier(1)
    graph = model.graph
    graph.input[0].CopyFrom(
        helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 784])
    )
    return model.SerializeToString()


def _damage(version_dir, case: str) -> None:
    model = version_dir / MODEL_FILE
    if case == "missing model file":
        model.unlink()
    elif case == "truncated onnx":
        _replace_model(version_dir, model.read_bytes()[: model.stat().st_size // 2])
    elif case == "corrupt onnx":
        _replace_model(version_dir, np.random.default_rng(0).bytes(4096))
    elif case == "sha256 mismatch":
        model.write_bytes(model.read_bytes() + b"\0")
    elif case == "bad model.json":
        (version_dir / MANIFEST).write_text('{"name": "mlp", "version": ')
    elif case == "wrong input shape in the graph":
        _replace_model(version_dir, _wrong_input_shape_model())


REFUSAL_REASONS = {
    "missing model file": "mlp/2/model.onnx: missing",
    "truncated onnx": "onnxruntime cannot load it",
    "corrupt onnx": "onnxruntime cannot load it",
    "sha256 mismatch": "does not match model.json",
    "bad model.json": "mlp/2/model.json: not valid JSON",
    "wrong input shape in the graph": "graph input 'images' is tensor(uint8) ['N', 784]",
}


@pytest.mark.parametrize("case", REFUSAL_REASONS)
async def test_a_damaged_version_is_refused_with_one_log_line_and_the_rest_serves(
    case, repository_copy, caplog, grpc_server
):
    _damage(repository_copy / "mlp" / "2", case)
    caplog.set_level(logging.INFO)
    settings = local_settings(model_repository=repository_copy,
                        parallel_inferences=1, grpc_server=grpc_server)
    async with running_server(settings) as server, grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}"
    ) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        mlp = await stub.GetModel(pb.GetModelRequest(name="mlp"))
        answer = await stub.Classify(_request())
    refusals = [r for r in caplog.records if r.getMessage() == "model version refused"]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.ERROR
    assert (refusals[0].fields["model"], refusals[0].fields["version"]) == ("mlp", 2)
    assert REFUSAL_REASONS[case] in refusals[0].fields["reason"]
    assert (mlp.version, list(mlp.versions)) == (1, [1])
    assert (answer.model.name, answer.model.version, len(answer.results)) == ("mlp", 1, 8)


@pytest.fixture
def restore_logging():
    """``cli.main`` sets up logging on the test's captured stderr; later tests need it back."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:], logging.root.level = handlers, level


@pytest.mark.parametrize("case", ["sha256 mismatch", "corrupt onnx"])
def test_without_a_good_version_of_a_required_model_the_server_exits_1_with_the_reason(
    case, repository_copy, capsys, restore_logging
):
    _damage(repository_copy / "baseline" / "1", case.replace("mlp", "baseline"))
    # One process: forking workers from pytest, whose gRPC threads are running, can deadlock.
    status = cli.main(["--model-repository", str(repository_copy), "--port", "0",
                       "--host", "127.0.0.1", "--workers", "1"])
    errors = capsys.readouterr().err.splitlines()
    assert status == 1
    assert errors[-1].startswith("fmnist-serve: error: ")
    assert "'baseline'" in errors[-1]
    assert REFUSAL_REASONS[case].replace("mlp/2", "baseline/1") in errors[-1]


# --- limits ----------------------------------------------------------------------------------


@pytest.fixture
async def small_server(model_repository, grpc_server):
    """Allows 4 images per request and messages of 4 KiB + a full batch."""
    settings = local_settings(model_repository=model_repository,
                        parallel_inferences=1, max_request_images=4,
                        max_message_bytes=4 * 788 + 1024, grpc_server=grpc_server)
    async with running_server(settings) as server, grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}"
    ) as channel:
        yield pb_grpc.ClassifierStub(channel)


async def test_more_images_than_the_limit_is_invalid_argument_naming_the_limit(small_server):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await small_server.Classify(_request(5))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 4 images" in refused.value.details()
    assert "--max-request-images" in refused.value.details()


async def test_a_message_over_the_size_limit_is_resource_exhausted(small_server):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await small_server.Classify(_request(8))  # ~6.3 KB > 4.2 KB
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.value.details()
    assert len((await small_server.Classify(_request(4))).results) == 4


async def test_calls_past_the_concurrency_limit_are_resource_exhausted(model_repository,
                                                                     grpc_server):
    settings = local_settings(model_repository=model_repository,
                        parallel_inferences=1, max_concurrent_calls=2, grpc_server=grpc_server)
    async with running_server(settings) as server, grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}"
    ) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        streams = [stub.ClassifyStream() for _ in range(2)]
        for stream in streams:  # two calls in flight: each has had an answer, and stays open
            await stream.write(_request())
            assert len((await stream.read()).results) == len(IMAGES)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Classify(_request())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-calls" in refused.value.details()
        health = health_pb2_grpc.HealthStub(channel)  # health is never refused
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == (
            health_pb2.HealthCheckResponse.SERVING)
        for stream in streams:
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK
        assert len((await stub.Classify(_request())).results) == len(IMAGES)


def test_calls_starting_together_are_counted_against_the_limit_as_they_start():
    """Calls entering on several threads at once: the check and the count are one step, so
    exactly the limit get in."""
    admission = Admission(max_in_flight=1)
    start = threading.Barrier(8)
    outcomes = []

    def enter():
        start.wait()
        try:
            admission.enter()
            outcomes.append("in")
        except ResourceExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=enter) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["in"] + ["refused"] * 7
    assert admission.in_flight == 1
    admission.leave()
    assert admission.in_flight == 0


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
                    response = await stub.Classify(_request(), timeout=30)
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
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", str(model_repository),
         "--host", "127.0.0.1", "--port", "0", "--grace-period", "30", "--log-format", "json",
         "--grpc-server", grpc_server],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in process.stderr:
            entry = json.loads(line)
            if entry["message"] == "serving":
                break
        events, outcomes = asyncio.run(_drive_until_refused(entry["address"], process))
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
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


def _children(pid: int) -> set[int]:
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(child) for child in (task / "children").read_text().split()}
    return children


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
                    response = await stub.Classify(_request(), timeout=30, wait_for_ready=True)
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
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", str(model_repository),
         "--host", "127.0.0.1", "--port", "0", "--workers", "2", "--poll-interval", "0",
         "--log-format", "json"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in process.stderr:
            entry = json.loads(line)
            if entry["message"] == "workers serving":
                break
        workers = set(entry["pids"])
        victim = min(workers)
        outcomes = asyncio.run(_load_through_a_kill(entry["address"], victim))
        for line in process.stderr:
            replaced = json.loads(line)
            if replaced["message"] == "worker died; starting another":
                break
        for _ in range(100):  # the replacement is forked up to a second after the death
            survivors = _children(process.pid)
            if len(survivors) == 2:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert replaced["pid"] == victim
    assert victim not in survivors
    assert len(survivors) == 2
    assert workers - {victim} <= survivors  # the other worker was left alone
    counts = Counter(outcome for client in outcomes for outcome in client)
    # Only calls the dead worker had in flight fail; every client is answered again after.
    assert set(counts) <= {"OK", "UNAVAILABLE"}, counts
    assert counts["UNAVAILABLE"] <= KILL_CLIENTS
    assert all(client[-CALLS_AFTER_KILL // 2:] == ["OK"] * (CALLS_AFTER_KILL // 2)
               for client in outcomes)
