"""fashion_mnist.v1 messages <-> numpy, with all validation of Classifier requests.

Responses are the hot path: a batch of 1000 images has 2000 ``Prediction`` messages, and
filling them field by field costs more than the inference. So the repeated ``results`` are
written directly in the protobuf wire format from precomputed per-label pieces and parsed once
by the C protobuf runtime (``ClassifyResponse.FromString``), which is about 3x faster; a test
checks the bytes equal what field-by-field construction gives.
"""

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np

from fashion_mnist.v1 import classifier_pb2 as pb
from serving.codecs.images import images_from_bytes
from serving.errors import InvalidArgument
from serving.repository import ModelVersion, Prediction


@dataclass(frozen=True)
class Classification:
    """The requested model's and the baseline's answers for one batch, and who gave them."""

    model: ModelVersion
    model_prediction: Prediction
    baseline: ModelVersion
    baseline_prediction: Prediction


def decode_classify_request(request: pb.ClassifyRequest, max_request_images: int) -> np.ndarray:
    """The request's images, ``uint8 [N,28,28]``, once its fields are checked (its model,
    version and request_id are used as they are)."""
    images = images_from_bytes(request.images, max_request_images, "images")
    check_version(request.version)
    return images


def check_version(version: int) -> None:
    if version < 0:
        raise InvalidArgument(f"version: expected 0 (the newest) or a version >= 1, got {version}")


def encode_classify_response(answer: Classification, request_id: str) -> pb.ClassifyResponse:
    """One ImageResult per image, with the refs of the two model versions that answered."""
    model, baseline = answer.model, answer.baseline
    response = pb.ClassifyResponse.FromString(_encode_results(
        answer.model_prediction, answer.baseline_prediction, model.manifest.class_names))
    response.model.name, response.model.version = model.name, model.version
    response.baseline.name, response.baseline.version = baseline.name, baseline.version
    response.request_id = request_id
    return response


def encode_model_info(model: ModelVersion, versions: list[int], is_default: bool) -> pb.ModelInfo:
    manifest = model.manifest
    return pb.ModelInfo(
        name=manifest.name, version=manifest.version, versions=versions,
        is_default_version=is_default,
        inputs=[pb.TensorSpec(**asdict(spec)) for spec in manifest.inputs],
        outputs=[pb.TensorSpec(**asdict(spec)) for spec in manifest.outputs],
        class_names=manifest.class_names, test_accuracy=manifest.test_accuracy,
        sha256=manifest.sha256, created_at=manifest.created_at, description=manifest.description)


def _encode_results(model: Prediction, baseline: Prediction, class_names: tuple[str, ...]) -> bytes:
    """The ``results`` field (1) of ClassifyResponse in wire format: for each image
    ``ImageResult{model: Prediction (1), baseline: Prediction (2)}``."""
    pieces = _wire_pieces(class_names)
    row_bytes = 4 * len(class_names)
    model_rows, baseline_rows = (_rows(prediction.probabilities, row_bytes)
                                 for prediction in (model, baseline))
    parts = []
    for model_label, baseline_label, model_row, baseline_row in zip(
        model.labels.tolist(), baseline.labels.tolist(), model_rows, baseline_rows, strict=True
    ):
        parts += (pieces.result_head[model_label][baseline_label],
                  pieces.model_head[model_label], model_row, pieces.tail[model_label],
                  pieces.baseline_head[baseline_label], baseline_row, pieces.tail[baseline_label])
    return b"".join(parts)


def _rows(probabilities: np.ndarray, row_bytes: int) -> list[bytes]:
    data = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
    return [data[start : start + row_bytes] for start in range(0, len(data), row_bytes)]


@dataclass(frozen=True)
class _WirePieces:
    """Per label: the bytes around a Prediction's packed probabilities."""

    model_head: list[bytes]  # ImageResult.model tag + length, then Prediction.probabilities tag
    baseline_head: list[bytes]
    tail: list[bytes]  # Prediction.label and Prediction.class_name
    result_head: list[list[bytes]]  # ClassifyResponse.results tag + length, by (model, baseline)


@cache
def _wire_pieces(class_names: tuple[str, ...]) -> _WirePieces:
    probabilities_head = _tag(1, 2) + _varint(4 * len(class_names))
    tails = [
        (_tag(2, 0) + _varint(label) if label else b"")  # proto3 leaves out label 0
        + _tag(3, 2) + _varint(len(name.encode())) + name.encode()
        for label, name in enumerate(class_names)
    ]
    sizes = [len(probabilities_head) + 4 * len(class_names) + len(tail) for tail in tails]

    def head(field: int, size: int) -> bytes:
        return _tag(field, 2) + _varint(size) + probabilities_head

    result_sizes = [[2 * len(_tag(1, 2)) + len(_varint(a)) + a + len(_varint(b)) + b
                     for b in sizes] for a in sizes]
    return _WirePieces(
        model_head=[head(1, size) for size in sizes],
        baseline_head=[head(2, size) for size in sizes], tail=tails,
        result_head=[[_tag(1, 2) + _varint(size) for size in row] for row in result_sizes])


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)
