"""Property-based fuzzing of the fashion_mnist.v1 API and of raw bytes on the wire.

Each hypothesis example sends a batch of cases at once over one channel to one shared
in-process server; the server must answer each case with the status the error contract gives
it (never UNKNOWN or INTERNAL), answer the valid ones correctly, and answer a good request
right after each batch exactly as onnxruntime does on the model file.

Cases per run (examples x cases each): Classify 400 x 10, ClassifyStream 150 x 1-8,
GetModel 100 x 10, raw bytes 300 x 10 + 20 x 1-8 streamed, ModelInfer 200 x 10,
ModelMetadata + ModelReady 50 x 10 x 2: over 11,000.
"""

from collections import Counter
from concurrent.futures import Future

import grpc
import numpy as np
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.contract import CLASS_NAMES, IMAGE_BYTES
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as pb_v2
from inference import grpc_service_pb2_grpc as pb_v2_grpc
from tests.conftest import FIXTURE_VERSIONS, local_settings, running_server

MAX_BATCH = 16
CASES_PER_EXAMPLE = 10
OK, INVALID, NOT_FOUND = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
)
# Every loaded version, from the fixture repository (versions are numbered per model from 1).
VERSIONS: dict[str, list[int]] = {}
for _name, _seed in FIXTURE_VERSIONS:
    VERSIONS.setdefault(_name, []).append(len(VERSIONS.get(_name, [])) + 1)
DEFAULT_MODEL = "mlp"
CLASSIFIER_METHODS = ("Classify", "ListModels", "GetModel")
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def fuzz_server(model_repository, grpc_server):
    settings_ = local_settings(
        model_repository=model_repository, parallel_inferences=2,
        max_request_images=MAX_BATCH, grpc_server=grpc_server,
    )
    with running_server(settings_) as running:
        yield running


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server):
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_server.port}") as opened:
        yield opened


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


model_names = st.one_of(
    st.sampled_from(["", "mlp", "softmax", "baseline", "MLP", "mlp ", "../mlp", "\x00"]),
    st.text(max_size=40),
)
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


def outcome(future: Future):
    try:
        return OK, future.result()
    except grpc.RpcError as error:
        return error.code(), error.details()


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


# --- the Open Inference Protocol (KServe v2) -------------------------------------------------

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
