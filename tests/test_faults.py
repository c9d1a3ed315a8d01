"""Faults: a damaged model repository, requests past the limits (SIGTERM under load and a
killed worker: tests/test_faults_under_load.py)."""

import hashlib
import json
import logging
import threading
from collections import namedtuple

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from common.contract import MANIFEST, MODEL_FILE
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from serving import cli
from serving.errors import ResourceExhausted
from serving.pipeline import Admission
from tests.conftest import local_settings, running_server, tiny_classifier
from tests.fault_requests import IMAGES, classify_request

CallDetails = namedtuple("CallDetails", "method invocation_metadata")


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
        answer = await stub.Classify(classify_request())
    refusals = [r for r in caplog.records if r.getMessage() == "model version refused"]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.ERROR
    assert (refusals[0].fields["model"], refusals[0].fields["version"]) == ("mlp", 2)
    assert REFUSAL_REASONS[case] in refusals[0].fields["reason"]
    assert (mlp.version, list(mlp.versions)) == (1, [1])
    assert (answer.model.name, answer.model.version, len(answer.results)) == ("mlp", 1, 8)


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
        await small_server.Classify(classify_request(5))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 4 images" in refused.value.details()
    assert "--max-request-images" in refused.value.details()


async def test_a_message_over_the_size_limit_is_resource_exhausted(small_server):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await small_server.Classify(classify_request(8))  # ~6.3 KB > 4.2 KB
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.value.details()
    assert len((await small_server.Classify(classify_request(4))).results) == 4


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
            await stream.write(classify_request())
            assert len((await stream.read()).results) == len(IMAGES)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Classify(classify_request())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-calls" in refused.value.details()
        health = health_pb2_grpc.HealthStub(channel)  # health is never refused
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == (
            health_pb2.HealthCheckResponse.SERVING)
        for stream in streams:
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK
        assert len((await stub.Classify(classify_request())).results) == len(IMAGES)


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
