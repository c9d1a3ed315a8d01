"""Property-based fuzzing of the fashion_mnist.v1 API and of raw bytes on the wire.

Each hypothesis example sends a batch of cases at once over one channel to one shared
in-process server; the server must answer each case with the status the error contract gives
it (never UNKNOWN or INTERNAL), answer the valid ones correctly, and answer a good request
right after each batch exactly as onnxruntime does on the model file.

Cases per run (examples x cases each): Classify 400 x 10, ClassifyStream 150 x 1-8,
GetModel 100 x 10, raw bytes 300 x 10 + 20 x 1-8 streamed; the Open Inference Protocol's
(tests/test_fuzz_v2.py) ModelInfer 200 x 10, ModelMetadata + ModelReady 50 x 10 x 2: over
11,000 in all.
"""

from collections import Counter

import grpc
import numpy as np
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.contract import CLASS_NAMES, IMAGE_BYTES
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.fuzz_helpers import (  # noqa: F401 (the fixtures)
    CASES_PER_EXAMPLE,
    FUZZ,
    INVALID,
    MAX_BATCH,
    NOT_FOUND,
    OK,
    VERSIONS,
    fuzz_channel_fixture,
    fuzz_server_fixture,
    model_names,
    outcome,
)

DEFAULT_MODEL = "mlp"
CLASSIFIER_METHODS = ("Classify", "ListModels", "GetModel")


@pytest.fixture(scope="module")
def reference(model_repository):
    """The default model and the baseline run straight from their files by onnxruntime, and a
    good request to check the server against them."""
    images = np.random.default_rng(7).integers(0, 256, (5, 28, 28), dtype=np.uint8)

    def run(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = model_repository / name / str(max(VERSIONS[name])) / "model.onnx"
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return tuple(session.run(["probabilities", "label"], {"images": images}))

    request = pb.ClassifyRequest(images=[image.tobytes() for image in images])
    return request, run(DEFAULT_MODEL), run("baseline")


def check_good_request_still_answered(channel, reference) -> None:
    request, (model_probabilities, model_labels), (base_probabilities, base_labels) = reference
    response = pb_grpc.ClassifierStub(channel).Classify(request, timeout=10)
    got = np.array([list(r.model.probabilities) for r in response.results], dtype=np.float32)
    np.testing.assert_allclose(got, model_probabilities, rtol=1e-5, atol=1e-6)
    assert [r.model.label for r in response.results] == model_labels.tolist()
    assert [r.baseline.label for r in response.results] == base_labels.tolist()
    got_base = np.array([list(r.baseline.probabilities) for r in response.results])
    np.testing.assert_allclose(got_base, base_probabilities, rtol=1e-5, atol=1e-6)


# --- strategies ----------------------------------------------------------------------------


image_lengths = st.one_of(
    st.sampled_from([0, 1, IMAGE_BYTES - 1, IMAGE_BYTES + 1, 28, 2 * IMAGE_BYTES]),
    st.integers(0, 3 * IMAGE_BYTES),
)


@st.composite
def image_batches(draw) -> list[bytes]:
    """Random pixels, mostly well-sized; some batches carry a few images of a wrong size (empty,
    short, long, off by one), and some a huge count of entries."""
    count = draw(
        st.one_of(
            st.integers(1, 4),
            st.sampled_from([0, MAX_BATCH, MAX_BATCH + 1]),
            st.integers(0, 3 * MAX_BATCH),
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lengths = [IMAGE_BYTES] * count
    if count:
        for index, length in draw(st.lists(st.tuples(st.integers(0, count - 1), image_lengths),
                                           max_size=2)):
            lengths[index] = length
    images = [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for length in lengths]
    if count > MAX_BATCH and draw(st.booleans()):
        images += [b""] * draw(st.integers(1, 20_000))
    return images


versions = st.one_of(
    st.just(0),
    st.integers(1, 4),
    st.integers(-(2**63), 2**63 - 1),
)


classify_requests = st.builds(
    pb.ClassifyRequest,
    images=image_batches(),
    model=model_names,
    version=versions,
    request_id=st.text(max_size=20),
)


# --- the contract ---------------------------------------------------------------------------


def expected_codes(request: pb.ClassifyRequest) -> set[grpc.StatusCode]:
    """The status codes the error contract allows for ``request`` (any of them when several
    fields are wrong)."""
    codes = set()
    count = len(request.images)
    if not 1 <= count <= MAX_BATCH or any(len(image) != IMAGE_BYTES for image in request.images):
        codes.add(INVALID)
    if request.version < 0:
        codes.add(INVALID)
    model = request.model or DEFAULT_MODEL
    if model not in VERSIONS or (request.version > 0 and request.version not in VERSIONS[model]):
        codes.add(NOT_FOUND)
    return codes or {OK}


def check_answer(request: pb.ClassifyRequest, response: pb.ClassifyResponse) -> None:
    model = request.model or DEFAULT_MODEL
    assert response.model.name == model
    assert response.model.version == (request.version or max(VERSIONS[model]))
    assert response.baseline.name == "baseline"
    assert response.request_id == request.request_id
    assert len(response.results) == len(request.images)
    for result in response.results:
        for prediction in (result.model, result.baseline):
            probabilities = np.array(prediction.probabilities)
            assert probabilities.shape == (len(CLASS_NAMES),)
            assert abs(probabilities.sum() - 1) < 1e-4
            assert prediction.label == int(np.argmax(probabilities))
            assert prediction.class_name == CLASS_NAMES[prediction.label]


# --- the properties -------------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(requests=st.lists(classify_requests, min_size=CASES_PER_EXAMPLE,
                         max_size=CASES_PER_EXAMPLE))
def test_classify_answers_every_request_by_the_contract(fuzz_channel, reference, requests):
    stub = pb_grpc.ClassifierStub(fuzz_channel)
    futures = [stub.Classify.future(request, timeout=30) for request in requests]
    for request, future in zip(requests, futures, strict=True):
        code, answer = outcome(future)
        assert code in expected_codes(request), (code, answer)
        if code == OK:
            check_answer(request, answer)
        else:
            assert answer, "an error without a message"
    check_good_request_still_answered(fuzz_channel, reference)


@settings(FUZZ, max_examples=150)
@given(requests=st.lists(classify_requests, min_size=1, max_size=8))
def test_classify_stream_answers_in_order_until_the_first_bad_request(
    fuzz_channel, reference, requests
):
    stub = pb_grpc.ClassifierStub(fuzz_channel)
    responses = []
    try:
        for response in stub.ClassifyStream(iter(requests), timeout=30):
            responses.append(response)
        code = OK
    except grpc.RpcError as error:
        code = error.code()
    for request, response in zip(requests, responses, strict=False):
        assert expected_codes(request) == {OK}
        check_answer(request, response)
    if code == OK:
        assert len(responses) == len(requests)
    else:
        assert code in expected_codes(requests[len(responses)]) - {OK}
    check_good_request_still_answered(fuzz_channel, reference)


@settings(FUZZ, max_examples=100)
@given(queries=st.lists(st.tuples(model_names, versions), min_size=CASES_PER_EXAMPLE,
                        max_size=CASES_PER_EXAMPLE))
def test_get_model_answers_every_query_by_the_contract(fuzz_channel, queries):
    stub = pb_grpc.ClassifierStub(fuzz_channel)
    futures = [
        stub.GetModel.future(pb.GetModelRequest(name=name, version=version), timeout=10)
        for name, version in queries
    ]
    for (name, version), future in zip(queries, futures, strict=True):
        code, answer = outcome(future)
        if version < 0:
            assert code == INVALID
        elif name in VERSIONS and version in (0, *VERSIONS[name]):
            assert code == OK
            assert (answer.name, answer.version) == (name, version or max(VERSIONS[name]))
            assert list(answer.versions) == VERSIONS[name]
        else:
            assert code == NOT_FOUND, (name, version, code)


WIRE_METHODS = [
    *(f"/fashion_mnist.v1.Classifier/{m}" for m in CLASSIFIER_METHODS),
    *(f"/inference.GRPCInferenceService/{m}" for m in (
        "ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics",
        "ServerMetadata")),
    "/grpc.health.v1.Health/Check",
]
garbage = st.one_of(
    st.binary(max_size=64),
    # valid-looking framing around random payloads: field 1 (images) or 2 (model), length
    st.builds(lambda field, payload: bytes([field << 3 | 2, len(payload)]) + payload,
              st.sampled_from([1, 2, 4]), st.binary(max_size=100)),
)


@settings(FUZZ, max_examples=300)
@given(cases=st.lists(st.tuples(st.sampled_from(WIRE_METHODS), garbage),
                      min_size=CASES_PER_EXAMPLE, max_size=CASES_PER_EXAMPLE))
def test_garbage_bytes_on_the_wire_get_client_errors(fuzz_channel, reference, cases):
    futures = [
        fuzz_channel.unary_unary(method).future(payload, timeout=10) for method, payload in cases
    ]
    codes = Counter(outcome(future)[0] for future in futures)
    assert set(codes) <= {OK, INVALID, NOT_FOUND}, codes
    check_good_request_still_answered(fuzz_channel, reference)


@settings(FUZZ, max_examples=20)
@given(payloads=st.lists(garbage, min_size=1, max_size=8))
def test_garbage_bytes_in_a_stream_get_client_errors(fuzz_channel, reference, payloads):
    call = fuzz_channel.stream_stream("/fashion_mnist.v1.Classifier/ClassifyStream")
    try:
        for _ in call(iter(payloads), timeout=10):
            pass
    except grpc.RpcError as error:
        assert error.code() in {INVALID, NOT_FOUND}, (error.code(), error.details())
    check_good_request_still_answered(fuzz_channel, reference)
