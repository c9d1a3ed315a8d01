"""Property-based fuzzing of the Open Inference Protocol (KServe v2) on the wire: ModelInfer
requests wrong in every part of their tensors (name, datatype, shape, size, values, raw or
typed contents) and unknown outputs or classification parameters, and ModelMetadata and
ModelReady queries. As in tests/test_fuzz.py, each hypothesis example sends a batch of cases
over one channel to one in-process server shared by the module; every case must get OK,
INVALID_ARGUMENT or NOT_FOUND, and a good ModelInfer right after each batch must be answered
exactly as onnxruntime does on the model file.

Cases per run (examples x cases each): ModelInfer 200 x 10, ModelMetadata + ModelReady 50 x 10
x 2.
"""

import numpy as np
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.contract import IMAGE_BYTES
from inference import grpc_service_pb2 as pb_v2
from inference import grpc_service_pb2_grpc as pb_v2_grpc
from tests.fuzz_helpers import (  # noqa: F401 (the fixtures)
    CASES_PER_EXAMPLE,
    FUZZ,
    INVALID,
    NOT_FOUND,
    OK,
    VERSIONS,
    fuzz_channel_fixture,
    fuzz_server_fixture,
    model_names,
    outcome,
)

DATATYPES = ["UINT8", "FP32", "INT64", "BYTES", "", "uint8"]


@st.composite
def infer_inputs(draw):
    """One input tensor with its data, raw or typed: mostly a valid [N,28,28] UINT8 batch,
    otherwise wrong in the name, datatype, shape, size, values or where the data goes."""
    count = draw(st.integers(1, 4))
    shape = draw(st.one_of(
        st.just([count, 28, 28]),
        st.just([count, 784]),
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
        st.lists(st.sampled_from([-1, 0, 1, 28, 2**31, 2**62]), max_size=4),
    ))
    size = count * IMAGE_BYTES + draw(st.sampled_from([0, 0, 0, -1, 1, -IMAGE_BYTES]))
    pixels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(
        0, 256, max(size, 0), dtype=np.uint8)
    tensor = pb_v2.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(["images", "images", "images", "", "pixels"])),
        datatype=draw(st.sampled_from(["UINT8", "UINT8", *DATATYPES])),
        shape=shape,
    )
    where = draw(st.sampled_from(["raw", "raw", "typed", "both", "none", "wrong typed"]))
    raw = []
    if where in ("raw", "both"):
        raw = [pixels.tobytes()] * draw(st.sampled_from([1, 1, 0, 2]))
    if where in ("typed", "both"):
        values = pixels.astype(np.uint32)
        if draw(st.booleans()) and values.size:
            values[draw(st.integers(0, values.size - 1))] = draw(st.integers(0, 2**32 - 1))
        tensor.contents.uint_contents.extend(values.tolist())
    if where == "wrong typed":
        tensor.contents.fp32_contents.extend(pixels[:50].astype(np.float32).tolist())
    return tensor, raw


@st.composite
def infer_requests(draw) -> pb_v2.ModelInferRequest:
    inputs = draw(st.lists(infer_inputs(), min_size=0, max_size=2))
    if len(inputs) == 1 or (inputs and draw(st.booleans())):
        inputs = inputs[:1]
    request = pb_v2.ModelInferRequest(
        model_name=draw(st.one_of(st.sampled_from(["mlp", "softmax", "baseline"]), model_names)),
        model_version=draw(st.one_of(
            st.sampled_from(["", "", "1", "2", "0", "-1", "1.0", "²", " 1", "99"]),
            st.text(max_size=6),
        )),
        id=draw(st.text(max_size=10)),
        inputs=[tensor for tensor, _ in inputs],
        raw_input_contents=[data for _, raw in inputs for data in raw],
    )
    for name in draw(st.lists(st.sampled_from(["probabilities", "label", "logits", ""]),
                              max_size=3)):
        output = request.outputs.add(name=name)
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.integers(-2, 12))
    return request


@pytest.fixture(scope="module")
def v2_reference(model_repository):
    """What onnxruntime answers for a few images with the newest mlp, straight from its file."""
    images = np.random.default_rng(11).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    path = model_repository / "mlp" / str(max(VERSIONS["mlp"])) / "model.onnx"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(["probabilities", "label"], {"images": images})
    request = pb_v2.ModelInferRequest(model_name="mlp", raw_input_contents=[images.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    return request, probabilities, labels


def check_good_infer_still_answered(channel, v2_reference) -> None:
    request, probabilities, labels = v2_reference
    response = pb_v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    outputs = dict(zip((o.name for o in response.outputs), response.raw_output_contents,
                       strict=True))
    got = np.frombuffer(outputs["probabilities"], dtype="<f4").reshape(probabilities.shape)
    np.testing.assert_allclose(got, probabilities, rtol=1e-5, atol=1e-6)
    assert np.frombuffer(outputs["label"], dtype="<i8").tolist() == labels.tolist()


@settings(FUZZ, max_examples=200)
@given(requests=st.lists(infer_requests(), min_size=CASES_PER_EXAMPLE,
                         max_size=CASES_PER_EXAMPLE))
def test_model_infer_answers_every_request_with_a_client_error_or_a_right_answer(
    fuzz_channel, v2_reference, requests
):
    stub = pb_v2_grpc.GRPCInferenceServiceStub(fuzz_channel)
    futures = [stub.ModelInfer.future(request, timeout=30) for request in requests]
    for request, future in zip(requests, futures, strict=True):
        code, answer = outcome(future)
        assert code in {OK, INVALID, NOT_FOUND}, (code, answer)
        if code == OK:
            count = request.inputs[0].shape[0]
            assert answer.model_name == request.model_name
            assert all(output.shape[0] == count for output in answer.outputs)
        else:
            assert answer, "an error without a message"
    check_good_infer_still_answered(fuzz_channel, v2_reference)


@settings(FUZZ, max_examples=50)
@given(queries=st.lists(st.tuples(model_names, st.text(max_size=4)),
                        min_size=CASES_PER_EXAMPLE, max_size=CASES_PER_EXAMPLE))
def test_model_metadata_and_readiness_answer_every_query(fuzz_channel, queries):
    stub = pb_v2_grpc.GRPCInferenceServiceStub(fuzz_channel)
    for name, version in queries:
        for method, request_type in ((stub.ModelMetadata, pb_v2.ModelMetadataRequest),
                                     (stub.ModelReady, pb_v2.ModelReadyRequest)):
            code, answer = outcome(method.future(request_type(name=name, version=version),
                                                 timeout=10))
            assert code in {OK, INVALID, NOT_FOUND}, (name, version, code, answer)
