"""The Open Inference Protocol servicer with our own generated stubs: the typed-contents path,
and the refusals tritonclient cannot send (mixing raw and typed data, wrong byte counts)."""

import time

import grpc
import numpy as np
import pytest

from fashion_mnist.v1 import classifier_pb2 as classifier_pb
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.api.inference import InferenceAPI
from serving.batching import BatchingPolicy
from serving.errors import Cancelled, DeadlineExceeded
from serving.pipeline import Call
from serving.repository import load_repository

Input = pb.ModelInferRequest.InferInputTensor
IMAGES = np.random.default_rng(7).integers(0, 256, (3, 28, 28), dtype=np.uint8)


@pytest.fixture
def v2(channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def typed_request(images: np.ndarray = IMAGES, **fields) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="mlp", inputs=[Input(
        name="images", datatype="UINT8", shape=images.shape,
        contents=pb.InferTensorContents(uint_contents=images.ravel().tolist()))], **fields)


def raw_request(images: np.ndarray = IMAGES, **fields) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="mlp", inputs=[Input(name="images", datatype="UINT8", shape=images.shape)],
        raw_input_contents=[images.tobytes()], **fields)


async def test_typed_contents_are_answered_raw_as_tritons_are(v2, stub):
    """Triton's gRPC answers every output in raw_output_contents, whatever form the request's
    data came in, and its own typed-input examples (grpc_explicit_int_content_client.py) read
    the answer there: answered typed here, they failed with an IndexError."""
    typed = await v2.ModelInfer(typed_request(id="t1"))
    raw = await v2.ModelInfer(raw_request())
    domain = await stub.Classify(classifier_pb.ClassifyRequest(
        model="mlp", images=[image.tobytes() for image in IMAGES]))
    raw.id = "t1"
    assert typed == raw
    assert not any(output.HasField("contents") for output in typed.outputs)
    assert [(output.name, list(output.shape)) for output in typed.outputs] == [
        ("probabilities", [3, 10]), ("label", [3])]
    probabilities = np.frombuffer(typed.raw_output_contents[0], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(
        probabilities, [list(r.model.probabilities) for r in domain.results], rtol=1e-6)
    assert np.frombuffer(typed.raw_output_contents[1], dtype="<i8").tolist() == [
        r.model.label for r in domain.results]


async def test_a_typed_classification_is_answered_raw_bytes(v2):
    request = typed_request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
        name="probabilities", parameters={"classification": pb.InferParameter(int64_param=2)})])
    response = await v2.ModelInfer(request)
    (output,) = response.outputs
    assert (output.datatype, list(output.shape), output.HasField("contents")) == (
        "BYTES", [3, 2], False)
    (blob,) = response.raw_output_contents
    length = int.from_bytes(blob[:4], "little")  # Triton's BYTES: 4-byte length, then bytes
    first = blob[4:4 + length].decode().split(":")
    assert len(first) == 3 and 0 <= float(first[0]) <= 1


REFUSALS = {
    "raw and typed mixed": (
        lambda: _with(typed_request(), raw_input_contents=[IMAGES.tobytes()]),
        "both in contents and in raw_input_contents"),
    "raw bytes short": (
        lambda: _with(raw_request(), raw_input_contents=[IMAGES.tobytes()[:-1]]),
        "needs 2352 UINT8 values, got 2351"),
    "typed values short": (
        lambda: pb.ModelInferRequest(model_name="mlp", inputs=[Input(
            name="images", datatype="UINT8", shape=[3, 28, 28],
            contents=pb.InferTensorContents(uint_contents=[1]))]),
        "needs 2352 UINT8 values, got 1"),
    "typed value over 255": (
        lambda: pb.ModelInferRequest(model_name="mlp", inputs=[Input(
            name="images", datatype="UINT8", shape=[1, 28, 28],
            contents=pb.InferTensorContents(uint_contents=[256] * 784))]),
        "UINT8 values are 0..255, got 256"),
    "typed in the wrong field": (
        lambda: pb.ModelInferRequest(model_name="mlp", inputs=[Input(
            name="images", datatype="UINT8", shape=[1, 28, 28],
            contents=pb.InferTensorContents(int_contents=[0] * 784))]),
        "UINT8 data goes in uint_contents, got int_contents"),
    "no data": (
        lambda: pb.ModelInferRequest(model_name="mlp", inputs=[Input(
            name="images", datatype="UINT8", shape=[1, 28, 28])]),
        "no data"),
    "typed empty batch": (  # said "no data (expected raw_input_contents or ...)"
        lambda: pb.ModelInferRequest(model_name="mlp", inputs=[Input(
            name="images", datatype="UINT8", shape=[0, 28, 28])]),
        "inputs['images']: expected at least 1 image, got 0"),
    "two raw entries": (
        lambda: _with(raw_request(), raw_input_contents=[IMAGES.tobytes(), b""]),
        "expected 1 entry"),
    "output requested twice": (
        lambda: raw_request(outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name="label")] * 2),
        "requested twice"),
    # answered inline, and the client read stale data from its region (Triton refuses both)
    "output to shared memory": (
        lambda: raw_request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
            name="label", parameters={"shared_memory_region": pb.InferParameter(
                string_param="region"), "shared_memory_byte_size": pb.InferParameter(
                int64_param=16)})]),
        "outputs['label'].parameters: shared memory is not served"),
    "input from shared memory": (
        lambda: pb.ModelInferRequest(model_name="mlp", inputs=[Input(
            name="images", datatype="UINT8", shape=[1, 28, 28], parameters={
                "shared_memory_region": pb.InferParameter(string_param="region")})]),
        "inputs['images'].parameters: shared memory is not served"),
    # said "got no value"; JSON's null is what HTTP's words for it would be
    "classification without a value": (
        lambda: raw_request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
            name="probabilities", parameters={"classification": pb.InferParameter()})]),
        "parameters['classification']: expected int64 >= 1, got null"),
}


def _with(request: pb.ModelInferRequest, raw_input_contents) -> pb.ModelInferRequest:
    del request.raw_input_contents[:]
    request.raw_input_contents.extend(raw_input_contents)
    return request


@pytest.mark.parametrize("case", REFUSALS)
async def test_malformed_tensors_are_invalid_argument(v2, case):
    build, message = REFUSALS[case]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await v2.ModelInfer(build())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()


async def test_a_stream_answers_each_request_in_order_and_a_refusal_in_its_place(v2):
    """Triton's ModelStreamInfer: a refused request is answered with its error message, and
    the stream goes on."""
    requests = [raw_request(id="a"), raw_request(IMAGES[:, :27], id="b", model_version="2"),
                raw_request(IMAGES[:1], id="c")]
    answers = [answer async for answer in v2.ModelStreamInfer(iter(requests))]
    assert [answer.error_message == "" for answer in answers] == [True, False, True]
    assert [answers[0].infer_response.id, answers[2].infer_response.id] == ["a", "c"]
    del answers[0].infer_response.parameters["triton_final_response"]  # streams' only
    assert answers[0].infer_response == await v2.ModelInfer(requests[0])
    assert answers[1].error_message.startswith("inputs['images']") and "shape" in \
        answers[1].error_message
    refused = answers[1].infer_response  # the client knows which request failed
    assert (refused.id, refused.model_name, refused.model_version) == ("b", "mlp", "2")


async def test_every_stream_answer_carries_the_final_flag_as_tritons_does(v2):
    """Triton's stream answers all carry ``triton_final_response`` (true: one answer per
    request here), asked for or not (``triton_enable_empty_final_response`` only adds empty
    answers of decoupled models); clients that read it to know a request is done waited for
    ever on the answers of requests that had not asked."""
    asking = raw_request(id="f", parameters={
        "triton_enable_empty_final_response": pb.InferParameter(bool_param=True)})
    requests = [asking, raw_request(), raw_request(IMAGES[:, :27])]
    answers = [answer async for answer in v2.ModelStreamInfer(iter(requests))]
    assert [answer.infer_response.parameters["triton_final_response"].bool_param
            for answer in answers] == [True, True, True]


async def test_a_stream_request_that_does_not_parse_is_named_by_its_place(channel):
    """Bytes that are no ModelInferRequest ended the stream with "request: Error parsing
    message", which named no message of the stream; ClassifyStream's say "request N: "."""
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                   response_deserializer=pb.ModelStreamInferResponse.FromString)
    call = stream(iter([raw_request(id="a").SerializeToString(), b"\xff\xff\xff"]))
    assert (await call.read()).infer_response.id == "a"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(
        "request 1: request: Error parsing message"), refused.value.details()


@pytest.mark.parametrize("gone, error", [
    (Call("/inference.GRPCInferenceService/ModelStreamInfer", deadline=time.monotonic() - 1),
     DeadlineExceeded),
    (Call("/inference.GRPCInferenceService/ModelStreamInfer", is_active=lambda: False),
     Cancelled)], ids=["deadline", "cancelled"])
def test_a_stream_whose_call_is_over_ends_instead_of_answering_an_error(model_repository, gone,
                                                                       error):
    """A stream whose deadline passed, or whose client cancelled it, ends as a unary call does:
    its request is not answered with an error message in its place, as a refused one is, and
    the stream does not read on for a client that is gone."""
    api = InferenceAPI(load_repository(model_repository, BatchingPolicy()), 64, "test")
    answers = api.ModelStreamInfer(iter([raw_request(id="late"), raw_request()]), gone)
    with pytest.raises(error):
        next(answers)


async def test_a_refused_request_does_not_disturb_the_next(v2):
    with pytest.raises(grpc.aio.AioRpcError):
        await v2.ModelInfer(_with(raw_request(), raw_input_contents=[b"x"]))
    response = await v2.ModelInfer(raw_request())
    assert [output.name for output in response.outputs] == ["probabilities", "label"]


async def test_server_metadata_lists_the_extensions_as_tritons_grpc_does(v2):
    """Triton's gRPC ServerMetadata answers the one list its HTTP /v2 does (the server core's),
    binary_tensor_data included: it was HTTP's only here."""
    metadata = await v2.ServerMetadata(pb.ServerMetadataRequest())
    assert list(metadata.extensions) == [
        "classification", "model_configuration", "binary_tensor_data", "statistics"]


def test_model_config_says_the_batching_its_version_runs_with(model_repository):
    """ModelConfig's dynamic batching delay and instance count are those of the policy the
    version's batcher runs (the server worked them out from the settings a second time)."""
    policy = BatchingPolicy(max_images=16, max_parallel=3, max_delay_s=0.002)
    api = InferenceAPI(load_repository(model_repository, policy), 64, "test")
    config = api.ModelConfig(pb.ModelConfigRequest(name="mlp"), Call("/x/ModelConfig")).config
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [group.count for group in config.instance_group] == [3]
    assert config.max_batch_size == 64
