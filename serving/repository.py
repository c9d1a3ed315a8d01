"""Discovers, verifies and loads the model repository: one onnxruntime session per model version.

Layout (written by ``training.repository``): ``<root>/<model>/<int version>/model.onnx`` plus
``model.json``. Hidden entries (``.staging-*``) and directories without version subdirectories
(``reports/``) are ignored. Each ``model.onnx`` is checked against the sha256 of its manifest
and its graph against the manifest's tensor specs before it serves; any problem is a
``RepositoryError`` whose message names the file and what was expected, so the server refuses
to start rather than serve something it cannot vouch for.
"""

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from serving.batching import Batcher, policy_for
from serving.codecs.images import IMAGE_SHAPE
from serving.errors import NotFound, RepositoryError
from serving.metrics import ModelMetrics

MANIFEST = "model.json"
MODEL_FILE = "model.onnx"
PROBABILITIES = "probabilities"
LABEL = "label"
REQUIRED_KEYS = ("name", "version", "inputs", "outputs", "classes", "sha256")
# Open Inference Protocol datatype -> onnxruntime type string.
ORT_TYPES = {"UINT8": "tensor(uint8)", "FP32": "tensor(float)", "INT64": "tensor(int64)"}

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Prediction:
    """One model's answer for a batch: ``float32 [N,classes]`` and ``int64 [N]``."""

    probabilities: np.ndarray
    labels: np.ndarray


class ModelVersion:
    """A verified model version and its onnxruntime session, shared by all requests.

    ``predict`` is the one way to run the model: through the version's ``Batcher``, which
    coalesces concurrent requests into one call and runs it in the executor or inline (the
    session releases the GIL and is safe to share between threads), or, for a caller on a
    front-door thread, on that thread.
    """

    def __init__(self, manifest: Manifest, session: onnxruntime.InferenceSession, executor):
        self.manifest = manifest
        self._session = session
        self._executor: Executor = executor
        self._input_name = manifest.inputs[0].name
        self._output_names = [PROBABILITIES, LABEL]
        self._batcher = Batcher(self._run, executor, policy_for(executor),
                                ModelMetrics(manifest.name, manifest.version, manifest.sha256))

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    async def predict(self, images: np.ndarray) -> Prediction:
        """``uint8 [N,28,28]`` -> the model's probabilities and labels."""
        return Prediction(*await self._batcher.predict(images))

    def predict_blocking(self, images: np.ndarray) -> Prediction:
        """The same as ``predict``, in the calling thread, unbatched and uncounted."""
        return Prediction(*self._run(images))

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, labels = self._session.run(self._output_names, {self._input_name: images})
        return probabilities, labels


class ModelRegistry:
    """The loaded model versions, by name and version.

    Changed only by ``add`` and ``remove`` (the repository watcher), each of which swaps in a
    new mapping in one assignment: a request sees the registry before or after a change, never
    in between, and keeps the version it got even if that version is removed meanwhile.
    """

    def __init__(self, versions: Iterable[ModelVersion] = ()):
        self._models: dict[str, dict[int, ModelVersion]] = {}
        # (name, version) -> why it was refused, for the versions that failed verification
        self.refused: dict[tuple[str, int], str] = {}
        for model in versions:
            self.add(model)

    def add(self, model: ModelVersion) -> None:
        """Adds (or replaces) a version; the newest version of a model is its default."""
        classes = next((m.manifest.class_names for m in self.list()), None)
        if classes is not None and model.manifest.class_names != classes:
            raise RepositoryError(
                f"{model.name}/{model.version}: classes differ from the loaded models' "
                "(model and baseline answers are compared label for label)"
            )
        models = {name: dict(versions) for name, versions in self._models.items()}
        versions = models.setdefault(model.name, {})
        versions[model.version] = model
        models[model.name] = dict(sorted(versions.items()))
        self._models = dict(sorted(models.items()))

    def remove(self, name: str, version: int) -> None:
        """Removes a version; calls that already hold it finish with it."""
        models = {n: dict(versions) for n, versions in self._models.items()}
        models.get(name, {}).pop(version, None)
        self._models = {n: versions for n, versions in models.items() if versions}

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        """The loaded versions of ``name``, ascending ([] if none)."""
        return list(self._models.get(name, {}))

    def get(self, name: str, version: int = 0) -> ModelVersion:
        """The model version, the newest if ``version`` is 0; NotFound names what exists."""
        versions = self._models.get(name)
        if versions is None:
            raise NotFound(f"model: no model {name!r}; loaded models: {', '.join(self.names)}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise NotFound(
                f"version: model {name!r} has no version {version}; "
                f"loaded versions: {', '.join(map(str, versions))}"
            )
        return versions[version]

    def list(self) -> list[ModelVersion]:
        """Every loaded version, sorted by name, then version."""
        return [model for versions in self._models.values() for model in versions.values()]

    def require(self, *names: str) -> None:
        """Refuses a repository lacking a model the server cannot work without."""
        for name in names:
            if name not in self._models:
                refusals = [reason for (model, _), reason in self.refused.items() if model == name]
                raise RepositoryError(
                    f"model repository has no {name!r} model (found: {', '.join(self.names)})"
                    + "".join(f"; refused: {reason}" for reason in refusals)
                )


def load_repository(root: Path, executor: Executor, intra_op_threads: int = 1) -> ModelRegistry:
    """Verifies and loads every model version under ``root``.

    A version that fails verification is refused with one log line and the others serve (as
    the repository watcher does later, so a restart serves what was served before it);
    RepositoryError if the repository is unusable or no version loads.
    """
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a directory")
    version_dirs = [path for model_dir in _model_dirs(root) for path in _version_dirs(model_dir)]
    if not version_dirs:
        raise RepositoryError(
            f"model repository {root} holds no model versions "
            f"(expected {root}/<model>/<version>/{MODEL_FILE} + {MANIFEST}; run fmnist-train)"
        )
    registry = ModelRegistry()
    for path in version_dirs:
        load_into(registry, path, executor, intra_op_threads)
    if not registry.list():
        raise RepositoryError(
            f"model repository {root}: no model version could be loaded: "
            + "; ".join(registry.refused.values())
        )
    return registry


def load_into(registry: ModelRegistry, path: Path, executor: Executor, intra_op_threads: int = 1):
    """Loads the version at ``path`` into ``registry``; if it fails verification, logs why and
    records it in ``registry.refused``. Returns whether it loaded."""
    key = (path.parent.name, int(path.name))
    try:
        registry.add(load_version(path, executor, intra_op_threads))
    except RepositoryError as error:
        registry.refused[key] = str(error)
        log.error(
            "model version refused",
            extra={"fields": {"model": key[0], "version": key[1], "reason": str(error)}},
        )
        return False
    registry.refused.pop(key, None)
    return True


def load_version(path: Path, executor: Executor, intra_op_threads: int = 1) -> ModelVersion:
    """Loads one ``<model>/<version>`` directory after checking its manifest and sha256."""
    started = time.perf_counter()
    manifest = read_manifest(path)
    model_bytes = _read(path / MODEL_FILE)
    actual = hashlib.sha256(model_bytes).hexdigest()
    if actual != manifest.sha256:
        raise RepositoryError(
            f"{path / MODEL_FILE}: sha256 {actual[:12]}... does not match {MANIFEST} "
            f"({manifest.sha256[:12]}...); the file changed after it was written"
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises several untyped errors for bad graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise RepositoryError(
            f"{path / MODEL_FILE}: onnxruntime cannot load it: {first_line}"
        ) from None
    _check_graph(path / MODEL_FILE, manifest, session)
    log.info(
        "model loaded",
        extra={
            "fields": {
                "model": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256[:12],
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )
    return ModelVersion(manifest, session, executor)


def read_manifest(path: Path) -> Manifest:
    """Parses and checks ``<path>/model.json`` against its directory and the serving contract."""
    manifest_path = path / MANIFEST
    try:
        document = json.loads(_read(manifest_path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RepositoryError(f"{manifest_path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise RepositoryError(f"{manifest_path}: expected a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise RepositoryError(f"{manifest_path}: missing key(s) {', '.join(missing)}")
    try:
        manifest = Manifest(
            name=str(document["name"]),
            version=int(document["version"]),
            inputs=tuple(_tensor_spec(spec) for spec in document["inputs"]),
            outputs=tuple(_tensor_spec(spec) for spec in document["outputs"]),
            class_names=tuple(str(name) for name in document["classes"]),
            sha256=str(document["sha256"]),
            test_accuracy=float((document.get("metrics") or {}).get("test_accuracy", 0.0)),
            created_at=str(document.get("created_at", "")),
            description=str(document.get("description", "")),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise RepositoryError(
            f"{manifest_path}: malformed ({type(error).__name__}: {error})"
        ) from None
    if (manifest.name, str(manifest.version)) != (path.parent.name, path.name):
        raise RepositoryError(
            f"{manifest_path}: names {manifest.name}/{manifest.version}, "
            f"expected {path.parent.name}/{path.name} (its directory)"
        )
    _check_contract(manifest_path, manifest)
    return manifest


def _check_contract(manifest_path: Path, manifest: Manifest) -> None:
    """The server feeds ``uint8 [N,28,28]`` and reads ``probabilities`` and ``label``."""
    image_input = ("UINT8", (-1, *IMAGE_SHAPE))
    if [(spec.datatype, spec.shape) for spec in manifest.inputs] != [image_input]:
        raise RepositoryError(
            f"{manifest_path}: inputs {list(manifest.inputs)}, expected one UINT8 [-1,28,28] input"
        )
    expected_outputs = (
        TensorSpec(PROBABILITIES, "FP32", (-1, len(manifest.class_names))),
        TensorSpec(LABEL, "INT64", (-1,)),
    )
    outputs = {spec.name: spec for spec in manifest.outputs}
    for spec in expected_outputs:
        if outputs.get(spec.name) != spec:
            raise RepositoryError(
                f"{manifest_path}: output {spec.name!r} is {outputs.get(spec.name)}, expected "
                f"{spec.datatype} {list(spec.shape)}"
            )


def _check_graph(model_path: Path, manifest: Manifest, session) -> None:
    """The ONNX graph's inputs and outputs have the names, types and shapes the manifest says."""
    graph_inputs = {arg.name: arg for arg in session.get_inputs()}
    graph_outputs = {arg.name: arg for arg in session.get_outputs()}
    if set(graph_inputs) != {spec.name for spec in manifest.inputs}:
        raise RepositoryError(
            f"{model_path}: graph inputs {sorted(graph_inputs)} differ from {MANIFEST}'s "
            f"{[spec.name for spec in manifest.inputs]}"
        )
    for kind, specs, graph in (("input", manifest.inputs, graph_inputs),
                               ("output", manifest.outputs, graph_outputs)):
        for spec in specs:
            arg = graph.get(spec.name)
            if arg is None:
                raise RepositoryError(f"{model_path}: graph has no {kind} {spec.name!r}")
            shape_fits = len(arg.shape) == len(spec.shape) and all(
                want in (-1, got) for got, want in zip(arg.shape, spec.shape, strict=True)
            )
            if arg.type != ORT_TYPES[spec.datatype] or not shape_fits:
                raise RepositoryError(
                    f"{model_path}: graph {kind} {spec.name!r} is {arg.type} {arg.shape}, "
                    f"{MANIFEST} says {spec.datatype} {list(spec.shape)}"
                )


def _tensor_spec(document: dict[str, Any]) -> TensorSpec:
    datatype = str(document["datatype"])
    if datatype not in ORT_TYPES:
        raise ValueError(f"datatype {datatype!r} is not one of {', '.join(ORT_TYPES)}")
    return TensorSpec(str(document["name"]), datatype, tuple(int(d) for d in document["shape"]))


def _model_dirs(root: Path) -> list[Path]:
    return sorted(
        path for path in _entries(root) if path.is_dir() and not path.name.startswith(".")
    )


def _version_dirs(model_dir: Path) -> list[Path]:
    """Subdirectories named by a positive integer; a directory with none is not a model."""
    versions = [p for p in _entries(model_dir) if p.is_dir() and is_version_name(p.name)]
    for path in versions:
        if int(path.name) < 1:
            raise RepositoryError(f"{path}: versions start at 1")
    return sorted(versions, key=lambda p: int(p.name))


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError as error:
        raise RepositoryError(f"{directory}: cannot list it ({error.strerror})") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing") from None
    except OSError as error:
        raise RepositoryError(f"{path}: cannot read it ({error.strerror})") from None


def is_version_name(name: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²", which int() refuses."""
    return name.isascii() and name.isdigit()
