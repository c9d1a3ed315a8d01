"""The Python API's answers (``Classification``, each model's ``ModelAnswer``) and the
ClassifyRequest and ClassifyResponse they are sent and read as: apart from the client's
calls (api.py), for what reads answers without calling (``fmnist score``'s CSV and summary)."""

import itertools
import operator
from dataclasses import dataclass, field

import numpy as np

from common.contract import IMAGE_BYTES, IMAGE_SHAPE
from fashion_mnist.v1 import classifier_pb2 as pb


@dataclass(frozen=True)
class ModelAnswer:
    """One model version's answer for a batch."""

    name: str
    version: int
    probabilities: np.ndarray  # float32 [N,10]
    labels: np.ndarray  # int64 [N]
    # per image, the name of its label: not in the repr (a notebook showed every one of 10,000)
    class_names: list[str] = field(repr=False)


@dataclass(frozen=True)
class Classification:
    """The requested model's and the baseline's answers for a batch."""

    model: ModelAnswer
    baseline: ModelAnswer
    request_id: str

    def __len__(self) -> int:
        return len(self.model.labels)


def as_images(images: np.ndarray) -> np.ndarray:
    """``uint8 [N,28,28]`` as it is, one ``[28,28]`` image as ``[1,28,28]``; ValueError else."""
    given = np.asarray(images)
    images = given[None] if given.shape == IMAGE_SHAPE else given
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected uint8 images [N,28,28], got {given.dtype} {given.shape}")
    return images


def text(name: str, value: str | None, meaning: str = "") -> str:
    """``value``, a str (None as "" where ``meaning`` says what "" is); a TypeError naming
    ``name`` else: protobuf's said "bad argument type for built-in operation"."""
    if isinstance(value, str) or (value is None and meaning):
        return value or ""
    raise TypeError(f"{name}: expected a str{f' ({meaning})' * bool(meaning)}, got "
                    f"{type(value).__name__}")


def integer(name: str, value: int, meaning: str) -> int:
    """``value`` as an int (numpy's too); a TypeError naming ``name`` else: protobuf's and
    range()'s named nothing ("'str' object cannot be interpreted as an integer")."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int ({meaning}), got "
                        f"{type(value).__name__}") from None


def version_number(version: int) -> int:
    """A request's ``version``, checked as far as protobuf's int64 goes (it said only "Value
    out of range"); a negative one is the server's to refuse."""
    version = integer("version", version, "0: the newest")
    if not -(2**63) <= version < 2**63:
        raise ValueError(f"version: expected 0 (the newest) or a version 1..2^63-1, got {version}")
    return version


def encode_request(
    images: np.ndarray, model: str = "", version: int = 0, request_id: str = ""
) -> pb.ClassifyRequest:
    """``uint8 [N,28,28]`` (or one ``[28,28]`` image) -> a ClassifyRequest; TypeError or
    ValueError naming an argument that cannot be sent."""
    data = np.ascontiguousarray(as_images(images)).tobytes()
    return pb.ClassifyRequest(
        images=[data[start : start + IMAGE_BYTES] for start in range(0, len(data), IMAGE_BYTES)],
        model=text("model", model, "'': the server's default"),
        version=version_number(version),
        request_id=text("request_id", request_id),
    )


def decode_response(response: pb.ClassifyResponse) -> Classification:
    results = response.results

    def answer(ref: pb.ModelRef, predictions: list[pb.Prediction]) -> ModelAnswer:
        classes = len(predictions[0].probabilities) if predictions else 0
        probabilities = np.fromiter(
            itertools.chain.from_iterable(p.probabilities for p in predictions),
            dtype=np.float32,
            count=len(predictions) * classes,
        ).reshape(len(predictions), classes)
        labels = np.fromiter((p.label for p in predictions), dtype=np.int64, count=len(predictions))
        return ModelAnswer(
            ref.name, ref.version, probabilities, labels, [p.class_name for p in predictions]
        )

    return Classification(
        answer(response.model, [r.model for r in results]),
        answer(response.baseline, [r.baseline for r in results]),
        response.request_id,
    )


def joined(answers: list[Classification]) -> Classification:
    """The answers of several calls as one; ValueError if the model's or the baseline's
    version changed between them (one was published or removed meanwhile): the figures of a
    run would mix two models under one name."""
    first = answers[0]
    for side in ("model", "baseline"):
        seen = {(getattr(a, side).name, getattr(a, side).version) for a in answers}
        if len(seen) > 1:
            versions = ", ".join(f"{name} v{version}" for name, version in sorted(seen))
            raise ValueError(f"the {side} changed version during the run ({versions}: one was "
                             "published or removed); run it again")

    def whole(side: str) -> ModelAnswer:
        parts = [getattr(answer, side) for answer in answers]
        return ModelAnswer(parts[0].name, parts[0].version,
                           np.concatenate([part.probabilities for part in parts]),
                           np.concatenate([part.labels for part in parts]),
                           [name for part in parts for name in part.class_names])

    return Classification(whole("model"), whole("baseline"), first.request_id)
