"""Checks a running service against onnxruntime on the same model files (compose smoke test).

Sends real Fashion-MNIST test images to the service with the project's Python client and runs
every model of the given model repository (the one copied out of the container) in-process with
onnxruntime on the same images: the served labels must be equal and the probabilities equal up
to float32 rounding, for the softmax and mlp models and for the baseline answer beside them.
With ``--http``, the same over the Open Inference Protocol's REST API (JSON), and the web page
and its random test image answer.
"""

import argparse
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.dataset import load_test_set
from serving.client.api import ClassifierClient, ModelAnswer
from serving.repository import version_dirs

SERVED_MODELS = ("softmax", "mlp")
# Both sides run the same graph on the same CPU kind; only thread scheduling can differ.
PROBABILITY_TOLERANCE = 1e-5
# A trained model, not a constant one: well above the 0.1 of guessing on ten classes.
MIN_ACCURACY = 0.6


class MismatchError(Exception):
    """The service's answer is not the reference's."""


def newest_version(repository: Path, model: str) -> Path:
    """The directory of ``model``'s newest version as the server reads the repository (its
    own function: 07 or 0 is no version to it, which isdigit() took for one)."""
    versions = {version: path for (name, version), path in version_dirs(repository).found.items()
                if name == model}
    if not versions:
        raise MismatchError(f"{repository / model}: no version directory")
    return versions[max(versions)]


def reference(version_dir: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of the ONNX model on the host, as the service should answer."""
    session = ort.InferenceSession(str(version_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(
        ["probabilities", "label"], {session.get_inputs()[0].name: images}
    )
    return probabilities, labels


def compare(answer: ModelAnswer, version_dir: Path, images: np.ndarray, truth: np.ndarray) -> str:
    if (answer.name, answer.version) != (version_dir.parent.name, int(version_dir.name)):
        raise MismatchError(f"served {answer.name} v{answer.version}, expected the newest version "
                       f"{version_dir.parent.name} v{version_dir.name}")
    probabilities, labels = reference(version_dir, images)
    if not np.array_equal(answer.labels, labels):
        differing = np.flatnonzero(answer.labels != labels)
        raise MismatchError(f"{answer.name}: {len(differing)} labels differ from onnxruntime's, "
                       f"first at image {differing[0]}")
    deviation = float(np.max(np.abs(answer.probabilities - probabilities)))
    if deviation > PROBABILITY_TOLERANCE:
        raise MismatchError(
            f"{answer.name}: probabilities differ from onnxruntime's by {deviation:.2e}"
        )
    accuracy = float(np.mean(labels == truth))
    if accuracy < MIN_ACCURACY:
        raise MismatchError(f"{answer.name}: accuracy {accuracy:.3f} on the test images, "
                       f"expected at least {MIN_ACCURACY}: not a trained model")
    return (f"{answer.name} v{answer.version}: {len(images)} images, labels equal, "
            f"max |dp| {deviation:.1e}, accuracy {accuracy:.3f}")


def check_http(base: str, repository: Path, images: np.ndarray, truth: np.ndarray) -> str:
    """mlp over REST JSON equals onnxruntime; the page and a random test image answer."""
    document = {"inputs": [{"name": "images", "datatype": "UINT8",
                            "shape": list(images.shape), "data": images.ravel().tolist()}],
                "outputs": [{"name": "label"}]}
    answer = _http(f"{base}/v2/models/mlp/infer", json.dumps(document).encode())
    (label,) = answer["outputs"]
    _, expected = reference(newest_version(repository, "mlp"), images)
    if not np.array_equal(np.asarray(label["data"]), expected):
        raise MismatchError("HTTP: mlp labels differ from onnxruntime's")
    with urllib.request.urlopen(f"{base}/", timeout=30) as page:
        if b"<html" not in page.read().lower():
            raise MismatchError("HTTP: GET / is not the web page")
    image = _http(f"{base}/v1/test-images/random")
    if len(image["pixels"]) != images[0].size:
        raise MismatchError("HTTP: the random test image is not 28x28")
    accuracy = float(np.mean(expected == truth))
    return f"HTTP: mlp over REST JSON, {len(images)} images, labels equal ({accuracy:.3f}); page"


def _http(url: str, body: bytes | None = None) -> dict:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="the service, HOST:PORT")
    parser.add_argument("--model-repository", type=Path, required=True,
                        help="the model repository the service loaded")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="directory of the test-set IDX files")
    parser.add_argument("--count", type=int, default=500, help="test images to send")
    parser.add_argument("--http", help="the service's HTTP base URL, e.g. http://HOST:8080")
    args = parser.parse_args()

    images, labels = load_test_set(args.data_dir)
    chosen = np.linspace(0, len(images) - 1, args.count).astype(int)
    images, labels = np.ascontiguousarray(images[chosen]), labels[chosen]
    try:  # (a repository without the baseline is said as any other mismatch)
        baseline_dir = newest_version(args.model_repository, "baseline")
        with ClassifierClient(args.target) as client:
            for model in SERVED_MODELS:
                answer = client.classify(images, model)
                print(compare(answer.model, newest_version(args.model_repository, model),
                              images, labels))
                print(f"  beside it, {compare(answer.baseline, baseline_dir, images, labels)}")
        if args.http:
            print(check_http(args.http, args.model_repository, images[:100], labels[:100]))
    except MismatchError as error:
        print(f"compose check: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
