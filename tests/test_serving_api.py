"""The Classifier API over a real in-process server: answers, errors, draining (health and
reflection: test_health_and_reflection.py)."""

import asyncio
import dataclasses

import grpc
import numpy as np
import onnxruntime
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.contract import CLASS_NAMES
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc
from tests.conftest import held_port, running_server

SERVICE = "fashion_mnist.v1.Classifier"


def request_for(images: np.ndarray, **fields) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(images=[image.tobytes() for image in images], **fields)


def probabilities_of(response: pb.ClassifyResponse, kind: str) -> np.ndarray:
    return np.array([getattr(r, kind).probabilities for r in response.results], dtype=np.float32)


def labels_of(response: pb.ClassifyResponse, kind: str) -> np.ndarray:
    return np.array([getattr(r, kind).label for r in response.results])


class Reference:
    """onnxruntime in the test process, on the same model files."""

    def __init__(self, root):
        self.root = root

    def __call__(self, name: str, version: int, images: np.ndarray):
        session = onnxruntime.InferenceSession(self.root / name / str(version) / "model.onnx")
        return session.run(["probabilities", "label"], {"images": images})


@pytest.fixture
def reference(model_repository) -> Reference:
    return Reference(model_repository)


def assert_answers_match(response, images, reference, model=("mlp", 2)):
    assert (response.model.name, response.model.version) == model
    assert (response.baseline.name, response.baseline.version) == ("baseline", 1)
    assert len(response.results) == len(images)
    for kind, (name, version) in (("model", model), ("baseline", ("baseline", 1))):
        probabilities, labels = reference(name, version, images)
        np.testing.assert_array_equal(probabilities_of(response, kind), probabilities)
        np.testing.assert_array_equal(labels_of(response, kind), labels)
        assert [getattr(r, kind).class_name for r in response.results] == [
            CLASS_NAMES[label] for label in labels]


@pytest.mark.parametrize("count", [1, 1000])
async def test_classify_answers_as_onnxruntime_does(stub, test_set, reference, count):
    images = test_set[0][:count]
    response = await stub.Classify(request_for(images, request_id="abc"))
    assert response.request_id == "abc"
    assert_answers_match(response, images, reference)
    np.testing.assert_allclose(probabilities_of(response, "model").sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize(("asked", "served"),
                         [(("softmax", 0), ("softmax", 1)), (("mlp", 1), ("mlp", 1)),
                          (("mlp", 2), ("mlp", 2)), (("baseline", 0), ("baseline", 1))])
async def test_classify_uses_the_requested_model_and_version(stub, test_set, reference, asked,
                                                            served):
    images = test_set[0][10:20]
    response = await stub.Classify(request_for(images, model=asked[0], version=asked[1]))
    assert_answers_match(response, images, reference, model=served)


async def test_stream_of_the_whole_test_set_answers_every_batch_in_order(stub, test_set,
                                                                         reference):
    images = test_set[0]
    batches = [images[start : start + 1000] for start in range(0, len(images), 1000)]
    requests = [request_for(batch, request_id=str(i)) for i, batch in enumerate(batches)]
    responses = [response async for response in stub.ClassifyStream(iter(requests))]
    assert [r.request_id for r in responses] == [str(i) for i in range(len(batches))]
    served = np.concatenate([probabilities_of(r, "model") for r in responses])
    probabilities, _ = reference("mlp", 2, images)
    np.testing.assert_array_equal(served, probabilities)
    baseline = np.concatenate([labels_of(r, "baseline") for r in responses])
    np.testing.assert_array_equal(baseline, reference("baseline", 1, images)[1])


async def test_list_models_lists_every_version_sorted(stub):
    response = await stub.ListModels(pb.ListModelsRequest())
    assert [(m.name, m.version, m.is_default_version) for m in response.models] == [
        ("baseline", 1, True), ("mlp", 1, False), ("mlp", 2, True), ("softmax", 1, True)]
    assert [list(m.versions) for m in response.models] == [[1], [1, 2], [1, 2], [1]]


async def test_get_model_describes_the_manifest(stub, model_repository):
    info = await stub.GetModel(pb.GetModelRequest(name="mlp"))
    assert (info.name, info.version, info.is_default_version) == ("mlp", 2, True)
    assert list(info.class_names) == list(CLASS_NAMES)
    assert [(t.name, t.datatype, list(t.shape)) for t in info.inputs] == [
        ("images", "UINT8", [-1, 28, 28])]
    assert [(t.name, t.datatype, list(t.shape)) for t in info.outputs] == [
        ("probabilities", "FP32", [-1, 10]), ("label", "INT64", [-1])]
    assert info.test_accuracy == pytest.approx(0.3)
    assert info.description == "tiny random mlp (seed 3)"
    assert len(info.sha256) == 64
    older = await stub.GetModel(pb.GetModelRequest(name="mlp", version=1))
    assert (older.version, older.is_default_version) == (1, False)


IMAGE = b"\0" * 784
ERRORS = [
    (pb.ClassifyRequest(images=[IMAGE] * 3 + [b"\0" * 100]), grpc.StatusCode.INVALID_ARGUMENT,
     "images[3]: expected 784 pixels (28x28 uint8), got 100"),
    (pb.ClassifyRequest(), grpc.StatusCode.INVALID_ARGUMENT,
     "images: expected at least 1 image, got 0"),
    (pb.ClassifyRequest(images=[IMAGE] * 17), grpc.StatusCode.INVALID_ARGUMENT,
     "images: expected at most 16 images per request (the server's --max-request-images), got 17"),
    (pb.ClassifyRequest(images=[IMAGE], model="resnet"), grpc.StatusCode.NOT_FOUND,
     "model: no model 'resnet'; loaded models: baseline, mlp, softmax"),
    (pb.ClassifyRequest(images=[IMAGE], model="mlp", version=9), grpc.StatusCode.NOT_FOUND,
     "version: model 'mlp' has no version 9; loaded versions: 1, 2"),
    (pb.ClassifyRequest(images=[IMAGE], version=-2), grpc.StatusCode.INVALID_ARGUMENT,
     "version: expected 0 (the newest) or a version >= 1, got -2"),
]


@pytest.fixture
async def small_stub(settings):
    """A server with a batch limit of 16 and a message limit just above it."""
    limited = dataclasses.replace(settings, max_request_images=16,
                                  max_message_bytes=16 * 788 + 1024)
    async with running_server(limited) as server, grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}") as channel:
        yield classifier_pb2_grpc.ClassifierStub(channel)


@pytest.mark.parametrize(("request_", "code", "message"), ERRORS)
async def test_classify_refuses_bad_requests_with_the_contract_status(small_stub, request_, code,
                                                                      message):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await small_stub.Classify(request_)
    assert (refused.value.code(), refused.value.details()) == (code, message)


async def test_a_bad_request_ends_a_stream_after_the_good_answers(small_stub):
    requests = [pb.ClassifyRequest(images=[IMAGE], request_id="0"),
                pb.ClassifyRequest(images=[IMAGE, b"\0"], request_id="1"),
                pb.ClassifyRequest(images=[IMAGE], request_id="2")]
    call = small_stub.ClassifyStream(iter(requests))
    first = await call.read()
    assert first.request_id == "0"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (  # which of the stream's requests: its place and id
        "request 1 ('1'): images[1]: expected 784 pixels (28x28 uint8), got 1")


async def test_a_stream_request_that_does_not_parse_is_named_by_its_place(channel):
    """Bytes that are no ClassifyRequest ended the stream with "request: Error parsing
    message", which named no request of the stream."""
    stream = channel.stream_stream("/fashion_mnist.v1.Classifier/ClassifyStream",
                                   response_deserializer=pb.ClassifyResponse.FromString)
    good = pb.ClassifyRequest(images=[IMAGE], request_id="0").SerializeToString()
    call = stream(iter([good, b"\xff\xff\xff"]))
    assert (await call.read()).request_id == "0"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("request 1: request: "), refused.value.details()


async def test_get_model_refuses_unknown_names_and_versions(stub):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetModel(pb.GetModelRequest(name="mlp", version=3))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetModel(pb.GetModelRequest(name=""))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    # a name the message quotes in full went past gRPC's 16 KB of details: RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetModel(pb.GetModelRequest(name="m" * 20_000))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(refused.value.details()) <= 1003 and refused.value.details().endswith("...")


async def test_a_message_over_the_limit_is_resource_exhausted(small_stub):
    oversized = pb.ClassifyRequest(images=[IMAGE * 20])  # 15,680 bytes > 13,632
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await small_stub.Classify(oversized)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.value.details()


async def test_unparsable_messages_are_invalid_argument_and_harm_nothing(channel, stub):
    expected = ("request: Error parsing message with type 'fashion_mnist.v1.ClassifyRequest'"
                ": Wire format was corrupt")
    unary = channel.unary_unary(f"/{SERVICE}/Classify")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await unary(b"\xff\xff\xff\xff")
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, expected)
    stream = channel.stream_stream(f"/{SERVICE}/ClassifyStream")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _ = [response async for response in stream(iter([b"\xff\xff"]))]
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "request 0: " + expected)  # the stream's first
    assert len((await stub.Classify(pb.ClassifyRequest(images=[IMAGE]))).results) == 1


async def test_draining_refuses_new_calls_but_keeps_health_answering(server, channel, stub,
                                                                     first_refusal):
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(asyncio.to_thread(server.stop, 5))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    refused = await first_refusal(lambda: stub.Classify(pb.ClassifyRequest(images=[IMAGE])))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    watch.cancel()
    await stopping


async def test_idle_streams_leave_call_threads_for_health_and_unary_calls(settings):
    """Each stream holds a call thread from its first message to its end: with 4, at most 3
    streams are open at once, and a thread stays for unary calls and health checks."""
    four_threads = dataclasses.replace(settings, call_threads=4)
    async with running_server(four_threads) as server, grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}") as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        idle = [stub.ClassifyStream(timeout=30) for _ in range(3)]
        for stream in idle:  # answered once, then idle
            await stream.write(pb.ClassifyRequest(images=[bytes(784)]))
            assert len((await stream.read()).results) == 1
        refused = stub.ClassifyStream(timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await refused.write(pb.ClassifyRequest(images=[bytes(784)]))
            await refused.read()
        assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == (
            health_pb2.HealthCheckResponse.SERVING)
        answer = await stub.Classify(pb.ClassifyRequest(images=[bytes(784)]), timeout=5)
        assert len(answer.results) == 1
        for stream in idle:
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK
        again = [stub.ClassifyStream(timeout=30) for _ in range(3)]  # their places came back
        for stream in again:
            await stream.write(pb.ClassifyRequest(images=[bytes(784)]))
            assert len((await stream.read()).results) == 1
        for stream in again:
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK


def test_the_health_port_refuses_unreadable_bytes_as_invalid_argument(settings):
    with running_server(dataclasses.replace(settings, health_port=held_port())) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as refused:
            check(b"\xff\xff\xff", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
