"""Reads and checks a version's ``model.json`` and its ONNX graph against the serving contract:
the server feeds ``uint8 [N,28,28]`` and reads ``probabilities`` and ``label``. Every problem is
a ``RepositoryError`` naming the file and what was expected."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import CLASS_NAMES, IMAGE_SHAPE, IMAGES, LABEL, MANIFEST, PROBABILITIES
from serving.errors import RepositoryError

REQUIRED_KEYS = ("name", "version", "inputs", "outputs", "classes", "sha256")
# Open Inference Protocol datatype -> onnxruntime type string.
ORT_TYPES = {"UINT8": "tensor(uint8)", "FP32": "tensor(float)", "INT64": "tensor(int64)"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    """The part of ``model.json`` the server uses."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    class_names: tuple[str, ...]
    sha256: str
    test_accuracy: float
    created_at: str
    description: str


def read_manifest(path: Path) -> Manifest:
    """Parses and checks ``<path>/model.json`` against its directory and the serving contract."""
    manifest_path, triton = path / MANIFEST, path.parent / "config.pbtxt"
    triton_s = (f" ({path.parent.name}/{triton.name} is Triton's and is not read: fmnist-train "
                "writes model.json, see README's 'From Triton')") if triton.is_file() else ""
    try:
        document = json.loads(read_file(manifest_path, missing=triton_s))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RepositoryError(f"{manifest_path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise RepositoryError(f"{manifest_path}: expected a JSON object")
    if missing := [key for key in REQUIRED_KEYS if key not in document]:
        raise RepositoryError(f"{manifest_path}: missing key(s) {', '.join(missing)}")
    try:
        manifest = Manifest(
            name=str(document["name"]), version=int(document["version"]),
            inputs=tuple(_tensor_spec(spec) for spec in document["inputs"]),
            outputs=tuple(_tensor_spec(spec) for spec in document["outputs"]),
            class_names=tuple(str(name) for name in document["classes"]),
            sha256=str(document["sha256"]),
            test_accuracy=float((document.get("metrics") or {}).get("test_accuracy", 0.0)),
            created_at=str(document.get("created_at", "")),
            description=str(document.get("description", "")))
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise RepositoryError(f"{manifest_path}: malformed ({type(error).__name__}: "
                              f"{error})") from None
    if (manifest.name, str(manifest.version)) != (path.parent.name, path.name):
        raise RepositoryError(f"{manifest_path}: names {manifest.name}/{manifest.version}, "
                              f"expected {path.parent.name}/{path.name} (its directory)")
    _check_contract(manifest_path, manifest)
    return manifest


def _check_contract(manifest_path: Path, manifest: Manifest) -> None:
    """The server feeds ``images``, ``uint8 [N,28,28]`` (an HTTP raw binary request names no
    input: it is this one), and reads ``probabilities`` and ``label``, whose
    numbers are Fashion-MNIST's classes (every model's, so model and baseline agree label for
    label, and the answers' class names are these)."""
    if manifest.class_names != CLASS_NAMES:
        raise RepositoryError(f"{manifest_path}: classes {list(manifest.class_names)}, "
                              f"expected Fashion-MNIST's in label order, {list(CLASS_NAMES)}")
    if list(manifest.inputs) != [TensorSpec(IMAGES, "UINT8", (-1, *IMAGE_SHAPE))]:
        raise RepositoryError(f"{manifest_path}: inputs {list(manifest.inputs)}, expected one "
                              f"UINT8 [-1,28,28] input {IMAGES!r}")
    expected_outputs = (TensorSpec(PROBABILITIES, "FP32", (-1, len(manifest.class_names))),
                        TensorSpec(LABEL, "INT64", (-1,)))
    outputs = {spec.name: spec for spec in manifest.outputs}
    for spec in expected_outputs:
        if outputs.get(spec.name) != spec:
            raise RepositoryError(f"{manifest_path}: output {spec.name!r} is "
                                  f"{outputs.get(spec.name)}, expected {spec.datatype} "
                                  f"{list(spec.shape)}")


def check_graph(model_path: Path, manifest: Manifest, session) -> None:
    """The ONNX graph's inputs and outputs have the names, types and shapes the manifest says,
    and a trial run answers as they promise."""
    graph_inputs = {arg.name: arg for arg in session.get_inputs()}
    graph_outputs = {arg.name: arg for arg in session.get_outputs()}
    if set(graph_inputs) != {spec.name for spec in manifest.inputs}:
        raise RepositoryError(f"{model_path}: graph inputs {sorted(graph_inputs)} differ from "
                              f"{MANIFEST}'s {[spec.name for spec in manifest.inputs]}")
    for kind, specs, graph in (("input", manifest.inputs, graph_inputs),
                               ("output", manifest.outputs, graph_outputs)):
        for spec in specs:
            arg = graph.get(spec.name)
            if arg is None:
                raise RepositoryError(f"{model_path}: graph has no {kind} {spec.name!r}")
            shape_fits = len(arg.shape) == len(spec.shape) and all(
                want in (-1, got) for got, want in zip(arg.shape, spec.shape, strict=True))
            if arg.type != ORT_TYPES[spec.datatype] or not shape_fits:
                raise RepositoryError(f"{model_path}: graph {kind} {spec.name!r} is {arg.type} "
                                      f"{arg.shape}, {MANIFEST} says {spec.datatype} "
                                      f"{list(spec.shape)}")
    _trial_run(model_path, manifest, session)


def _trial_run(model_path: Path, manifest: Manifest, session) -> None:
    """Runs two images (black, white): a graph that loads with the right signature but fails
    or answers nonsense when run is refused here, not on each call once it is the newest."""
    images = np.stack([np.zeros(IMAGE_SHAPE, np.uint8), np.full(IMAGE_SHAPE, 255, np.uint8)])
    try:
        probabilities, labels = session.run([PROBABILITIES, LABEL],
                                            {manifest.inputs[0].name: images})
    except Exception as error:  # onnxruntime's untyped errors
        raise RepositoryError(f"{model_path}: a trial run on 2 images failed: "
                              f"{first_line(error)}") from None
    if fault := _trial_fault(probabilities, labels, len(manifest.class_names)):
        raise RepositoryError(f"{model_path}: a trial run on 2 images answered {fault}")


def _trial_fault(probabilities: np.ndarray, labels: np.ndarray, classes: int) -> str:
    """The first promise of the trial run's answer that it breaks, with the value that breaks
    it ("" if none): a graph of logits (no Softmax) is told its rows' sums, not every check."""
    if probabilities.shape != (2, classes) or labels.shape != (2,):
        return (f"probabilities of shape {list(probabilities.shape)} and labels of shape "
                f"{list(labels.shape)}, expected [2, {classes}] and [2]")
    if not np.isfinite(probabilities).all():
        return f"a probability of {probabilities[~np.isfinite(probabilities)][0]}, not finite"
    if not np.allclose(sums := probabilities.sum(axis=1), 1, atol=1e-3):
        return f"probabilities whose rows sum to {[round(float(row), 4) for row in sums]}, not 1"
    if not np.isin(labels, range(classes)).all():
        return f"labels {labels.tolist()}, not class numbers 0..{classes - 1}"
    return ""


def first_line(error: Exception) -> str:
    """The first line of an error's message (onnxruntime's run on for pages), or its type."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _tensor_spec(document: dict[str, Any]) -> TensorSpec:
    datatype = str(document["datatype"])
    if datatype not in ORT_TYPES:
        raise ValueError(f"datatype {datatype!r} is not one of {', '.join(ORT_TYPES)}")
    return TensorSpec(str(document["name"]), datatype, tuple(int(d) for d in document["shape"]))


def read_file(path: Path, missing: str = "") -> bytes:
    """``path``'s bytes; RepositoryError "missing" (then ``missing``, a hint) or why not."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing{missing}") from None
    except OSError as error:
        raise RepositoryError(f"{path}: cannot read it ({error.strerror})") from None
