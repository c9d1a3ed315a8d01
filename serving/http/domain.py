"""The domain endpoints a person can use with curl: bodies <-> ``fashion_mnist.v1`` messages,
and the test images the web page's "random test image" shows.

``POST /v1/classify`` takes an image file (converted as ``fmnist classify`` converts it:
common.pictures) or JSON ``{"images": [[784 ints], ...], "model": "mlp", "version": 0,
"request_id": "..."}`` and answers,
per image, the model's top k and the baseline's, with class names. Sizes, counts and models
are checked by the data plane's codec; refused here is only what cannot become a
``ClassifyRequest``.
"""

import io
import json
import logging
import re
import threading
from concurrent.futures import Executor
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from common.contract import CLASS_NAMES, IMAGE_SHAPE, PIXELS
from common.pictures import load_png, pillow
from fashion_mnist.v1 import classifier_pb2 as pb
from serving.codecs.images import check_batch_size
from serving.errors import InvalidArgument, NotFound, UnsupportedMediaType
from serving.http.body import (
    byte_order_mark,
    message_json,
    parse_json,
    unmarked_utf16_or_32,
)

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")  # decoders without outside programs
# Larger pictures are refused before they are decoded: a 4 MiB PNG of one colour can hold a
# billion pixels. 25 million is a 5000x5000 photo.
MAX_IMAGE_PIXELS = 25_000_000
INT64 = range(-(2**63), 2**63)  # what the protobuf fields of a version hold

log = logging.getLogger(__name__)


def check_media_type(content_type: str) -> None:
    """/v1/classify reads the body as an image file or JSON whatever its Content-Type says,
    but a form (``curl -F file=@x.png``) wraps the file in parts it would not find."""
    if content_type.partition(";")[0].strip().lower() == "multipart/form-data":
        raise UnsupportedMediaType(
            "Content-Type: multipart/form-data is not served; send the file itself as the body "
            "(curl --data-binary @FILE, not curl -F)")


JSON_KEYS = ("images", "model", "version", "request_id")


class Options:
    """The query string's options of /v1/classify; a misspelt one is refused, not ignored."""

    def __init__(self, query: str):
        values = query_options(query, "/v1/classify", ("model", "version", "top", "invert",
                                                       "pixels"))
        self.model = values.get("model", "")
        self.version = _integer(values.get("version", "0"), "version")
        self.top = _integer(values.get("top", "3"), "top")
        if not 1 <= self.top <= len(CLASS_NAMES):
            raise InvalidArgument(f"top: expected 1..{len(CLASS_NAMES)}, got {self.top}")
        self.invert = _flag(values.get("invert"), "invert")
        self.pixels = _flag(values.get("pixels"), "pixels")


def query_options(query: str, endpoint: str, names: tuple[str, ...]) -> dict[str, str]:
    """The query string's options; a misspelt one, or one given twice, is refused, not ignored
    (the answer would come from another model, or with other options)."""
    given = parse_qs(query, keep_blank_values=True)
    if unknown := sorted(given.keys() - set(names)):
        raise InvalidArgument(f"{', '.join(unknown)}: not an option of {endpoint}; "
                              + (f"expected {', '.join(names)}" if names else "it takes none"))
    for key, items in given.items():
        if len(items) > 1:
            raise InvalidArgument(f"{key}: given {len(items)} times in the query "
                                  f"({', '.join(items)[:200]}); give it once")
    return {key: items[0] for key, items in given.items()}


def list_models_request(query: str) -> pb.ListModelsRequest:
    query_options(query, "/v1/models", ())
    return pb.ListModelsRequest()


def version_option(query: str) -> int:
    """/v1/models/{name}'s one option, ``version`` (0: the newest)."""
    return _integer(query_options(query, "/v1/models/{name}", ("version",)).get("version", "0"),
                    "version")


def decode_classify(body: bytes, options: Options, decoder: Executor,
                    max_images: int) -> pb.ClassifyRequest:
    """JSON (the body starts with "{" or "[", after a UTF-8 byte order mark if any, or with
    UTF-16's or UTF-32's mark, or after NUL bytes, which parse_json refuses by name) of at most
    ``max_images`` images, or an image file, decoded on ``decoder``'s threads -> the
    ClassifyRequest."""
    text = body.removeprefix(b"\xef\xbb\xbf")
    if text.lstrip()[:1] in (b"{", b"[") or byte_order_mark(body) or unmarked_utf16_or_32(body):
        return _document_request(parse_json(body), options, max_images)  # drops the mark
    pixels = _image_pixels(body, options.invert, decoder)
    return pb.ClassifyRequest(images=[pixels.tobytes()], model=options.model,
                              version=options.version)


def _document_request(document, options: Options, max_images: int) -> pb.ClassifyRequest:
    """The body's model and version, else the query's: both may name them, not differently
    ("" and 0, the defaults, name nothing)."""
    if not isinstance(document, dict):
        raise InvalidArgument("request body: expected a JSON object")
    if unknown := sorted(document.keys() - set(JSON_KEYS)):
        raise InvalidArgument(f"{', '.join(unknown)}: not a key of the request; expected "
                              f"{', '.join(JSON_KEYS)}")
    images = document.get("images")
    if not isinstance(images, list):
        raise InvalidArgument('images: expected a JSON array of images, each 784 integers '
                              '0..255 (or 28 rows of 28)')
    # counted before each is converted, as the data plane's codec counts a gRPC request's
    # (4 MiB of empty images, "[],", were 1.4 million conversions before their refusal)
    check_batch_size(len(images), max_images, "images")
    model, version = document.get("model", ""), document.get("version", 0)
    request_id = document.get("request_id", "")
    for name, value in (("model", model), ("request_id", request_id)):
        if not isinstance(value, str):
            raise InvalidArgument(f"{name}: expected a string, got {json.dumps(value)[:40]}")
    if type(version) is not int or version not in INT64:
        raise InvalidArgument(f"version: expected an integer within int64, got "
                              f"{json.dumps(version)[:40]}")
    for name, asked, given in (("model", options.model, model),
                               ("version", options.version, version)):
        if asked and given and asked != given:
            raise InvalidArgument(f"{name}: the query asks for {asked!r}, the body for {given!r}")
    model, version = model or options.model, version or options.version
    return pb.ClassifyRequest(images=[_image_bytes(image, index)
                                      for index, image in enumerate(images)],
                              model=model, version=version, request_id=request_id)


def _image_bytes(image, index: int) -> bytes:
    """One image's JSON pixels as bytes: 784 of them, or 28 rows of 28; the data plane checks
    the count of a flat list, as it checks a gRPC image's."""
    try:
        if not isinstance(image, list):
            raise TypeError
        if image and isinstance(image[0], list):
            if len(image) != IMAGE_SHAPE[0] or any(
                    not isinstance(row, list) or len(row) != IMAGE_SHAPE[1] for row in image):
                raise TypeError
            image = [value for row in image for value in row]
        if not all(type(value) is int for value in image):  # bytes() takes True and False
            raise TypeError
        return bytes(image)
    except (TypeError, ValueError):
        raise InvalidArgument(f"images[{index}]: expected 784 integers 0..255 "
                              f"(or 28 rows of 28), got {_refused(image)}") from None


def _refused(image) -> str:
    """What of a refused image is wrong, in JSON's words: its shape, or its first bad value
    and where (row-major)."""
    if not isinstance(image, list):
        return json.dumps(image)[:40]
    if image and isinstance(image[0], list):
        if len(image) != IMAGE_SHAPE[0]:
            return f"{len(image)} row" + "s" * (len(image) != 1)
        for number, row in enumerate(image):
            if not isinstance(row, list):
                return f"{json.dumps(row)[:40]} as row {number}"
            if len(row) != IMAGE_SHAPE[1]:
                return f"{len(row)} values in row {number}"
        image = [value for row in image for value in row]
    return next(f"{json.dumps(value)[:40]} at {place}" for place, value in enumerate(image)
                if type(value) is not int or not 0 <= value <= 255)


def _image_pixels(body: bytes, invert: bool, decoder: Executor) -> np.ndarray:
    from PIL import UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    too_large = f"is over {MAX_IMAGE_PIXELS:,} pixels; scale it down first"
    expected = (f"expected a {', '.join(IMAGE_FORMATS)} image, or JSON "
                f'{{"images": [[784 integers 0..255], ...]}}')
    if not body:
        raise InvalidArgument(f"body: empty; {expected}")
    kind = ""  # the format Pillow found, if it found one
    try:
        with pillow().open(io.BytesIO(body), formats=IMAGE_FORMATS) as image:
            (width, height), kind = image.size, image.format
        if width * height > MAX_IMAGE_PIXELS:
            raise InvalidArgument(f"body: a {width}x{height} image {too_large}")
        return decoder.submit(load_png, io.BytesIO(body), invert).result()
    except InvalidArgument:
        raise
    except DecompressionBombError:  # Pillow's own limit, far above ours
        raise InvalidArgument(f"body: the image {too_large}") from None
    except Exception as error:  # whatever Pillow makes of a damaged or foreign file
        reason = ("not an image file it knows" if isinstance(error, UnidentifiedImageError)
                  else str(error))
        # a file of a format Pillow knows, whose decoder could not read it to the end
        said = f"a damaged {kind} image, or cut short" if kind else expected
        raise InvalidArgument(f"body: {said} ({reason})") from None


def encode_classify(request: pb.ClassifyRequest, response: pb.ClassifyResponse,
                    options: Options) -> dict:
    """Per image the model's top k and the baseline's, best first; with ``pixels`` also the
    28x28 image the models saw (the page draws it)."""
    results = []
    for image, result in zip(request.images, response.results, strict=True):
        entry = {"model": _prediction(result.model, options.top),
                 "baseline": _prediction(result.baseline, options.top)}
        if options.pixels:
            entry["pixels"] = list(image)
        results.append(entry)
    answer = {"model": message_json(response.model),
              "baseline": message_json(response.baseline), "results": results}
    return answer | ({"request_id": response.request_id} if response.request_id else {})


def _prediction(prediction: pb.Prediction, top: int) -> dict:
    probabilities = np.asarray(prediction.probabilities, dtype=np.float32)
    best = np.argsort(-probabilities, kind="stable")[:top]
    return {"label": prediction.label, "class_name": prediction.class_name,
            "top": [{"label": int(label), "class_name": CLASS_NAMES[label],
                     "probability": round(float(probabilities[label]), 6)}
                    for label in best]}


def models_json(response: pb.ListModelsResponse, default_model: str) -> dict:
    """``default_model``: the model a call naming none gets (the page names it)."""
    return {"models": [message_json(model) for model in response.models],
            "default_model": default_model}


class TestImages:
    """The 10,000 Fashion-MNIST test images, read on first use from ``directory``."""

    def __init__(self, directory: Path | None):
        self._directory = directory
        self._loaded: tuple[np.ndarray, np.ndarray] | None = None
        self._loading = threading.Lock()
        self._failure = ""  # the last reason they could not be read, logged once
        self._random = np.random.default_rng()

    def get(self, index: str) -> dict:
        """``index``: "random" or 0..9999; the image, its label and class name."""
        images, labels = self._load()
        if index == "random":
            number = int(self._random.integers(len(images)))
        else:
            number = _integer(index, "test image index")
            if not 0 <= number < len(images):
                raise NotFound(
                    f"test image {number}: there are {len(images)} (0..{len(images) - 1})")
        label = int(labels[number])
        return {"index": number, "label": label, "class_name": CLASS_NAMES[label],
                "pixels": images[number].reshape(PIXELS).tolist()}

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        from common.dataset import data_dir, load_test_set

        with self._loading:
            if self._loaded is None:
                try:  # data_dir() too: ValueError for FMNIST_DATA_DIR=~nosuchuser/x
                    self._loaded = load_test_set(self._directory or data_dir(), "--test-images-dir")
                except (OSError, ValueError) as error:
                    if str(error) != self._failure:  # tried again on each request: the files
                        self._failure = str(error)  # may come, but said once, not per request
                        log.warning("test images cannot be read", extra={"fields": {
                            "error": str(error)}})
                    raise NotFound("no test images on this server (its log says why)") from None
            return self._loaded


def _integer(text: str, name: str) -> int:
    """A query's or path's integer, within int64 (what the protobuf fields hold)."""
    if not re.fullmatch(r"-?[0-9]+", text):
        raise InvalidArgument(f"{name}: expected an integer, got {text!r}")
    if len(text.lstrip("-")) > 19 or int(text) not in INT64:  # int() stops at
        raise InvalidArgument(f"{name}: {text[:40]} is out of range")  # 4300 digits
    return int(text)


def _flag(text: str | None, name: str) -> bool:
    """Absent: false; given with no value (``?pixels``): true."""
    if text is None:
        return False
    if text.lower() not in ("", "0", "1", "true", "false", "yes", "no"):
        raise InvalidArgument(f"{name}: expected true or false, got {text!r}")
    return text.lower() in ("", "1", "true", "yes")
