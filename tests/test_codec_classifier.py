"""The codecs: validation messages and the hand-written wire format of ClassifyResponse."""


import numpy as np
import pytest

from common.contract import CLASS_NAMES
from fashion_mnist.v1 import classifier_pb2 as pb
from serving.batching import BatchingPolicy
from serving.client.api import encode_request
from serving.codecs.classifier import (
    Classification,
    decode_classify_request,
    encode_classify_response,
)
from serving.codecs.images import images_from_bytes
from serving.errors import InvalidArgument
from serving.repository import Prediction, load_repository


def test_images_from_bytes_keeps_pixels_in_row_major_order():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    decoded = images_from_bytes([image.tobytes() for image in images], 8, "images")
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, images)


@pytest.mark.parametrize(
    ("images", "limit", "message"),
    [
        ([], 8, "images: expected at least 1 image, got 0"),
        ([b"\0" * 784] * 9, 8, "images: expected at most 8 images per request"),
        ([b"\0" * 784] * 3 + [b"\0" * 100], 8,
         "images[3]: expected 784 pixels (28x28 uint8), got 100"),
        ([b"\0" * 783, b"\0" * 785], 8, "images[0]: expected 784 pixels (28x28 uint8), got 783"),
    ],
)
def test_images_from_bytes_refuses_with_the_field_and_the_expected_value(images, limit, message):
    with pytest.raises(InvalidArgument) as refused:
        images_from_bytes(images, limit, "images")
    assert str(refused.value).startswith(message)


def test_decode_refuses_a_negative_version():
    request = pb.ClassifyRequest(images=[b"\0" * 784], version=-1)
    with pytest.raises(InvalidArgument, match=r"version: expected 0 .* got -1"):
        decode_classify_request(request, 8)


@pytest.fixture(scope="module")
def registry(model_repository):
    return load_repository(model_repository, BatchingPolicy())


def _field_by_field(answer: Classification, request_id: str) -> pb.ClassifyResponse:
    def prediction(p: Prediction, i: int) -> pb.Prediction:
        label = int(p.labels[i])
        return pb.Prediction(probabilities=p.probabilities[i].tolist(), label=label,
                             class_name=CLASS_NAMES[label])

    return pb.ClassifyResponse(
        results=[pb.ImageResult(model=prediction(answer.model_prediction, i),
                                baseline=prediction(answer.baseline_prediction, i))
                 for i in range(len(answer.model_prediction.labels))],
        model=pb.ModelRef(name=answer.model.name, version=answer.model.version),
        baseline=pb.ModelRef(name=answer.baseline.name, version=answer.baseline.version),
        request_id=request_id,
    )


@pytest.mark.parametrize("count", [1, 10, 1000])
def test_wire_encoded_response_equals_field_by_field_construction(count, registry):
    rng = np.random.default_rng(count)

    def prediction() -> Prediction:
        probabilities = rng.dirichlet(np.ones(10), count).astype(np.float32)
        # every label, including 0 (which proto3 leaves out of the wire format)
        return Prediction(probabilities, np.arange(count, dtype=np.int64) % 10)

    answer = Classification(
        registry.get("mlp"), prediction(), registry.get("baseline"), prediction()
    )
    encoded = encode_classify_response(answer, "req-7")
    expected = _field_by_field(answer, "req-7")
    assert encoded == expected
    assert encoded.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


def test_request_encoding_round_trips(test_set):
    request = encode_request(test_set[0][:3], model="softmax", version=1, request_id="x")
    assert isinstance(request, pb.ClassifyRequest)
    assert [len(image) for image in request.images] == [784] * 3
    assert request.images[2] == test_set[0][2].tobytes()
