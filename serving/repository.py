"""Discovers, verifies and loads the model repository: one onnxruntime session per model version.

Layout (written by ``training.repository``): ``<root>/<model>/<int version>/model.onnx`` plus
``model.json``. Hidden entries (``.staging-*``) and directories without version subdirectories
(``reports/``) are ignored. Each ``model.onnx`` is checked against the sha256 of its manifest
and its graph against the manifest's tensor specs before it serves; any problem is a
``RepositoryError`` whose message names the file and what was expected, and that version is
refused (one log line) rather than served, and the others serve: the server refuses to start
only over a repository it cannot list or in which no version loads (``load_repository``), or
without a good version of the default or the baseline model (``ModelRegistry.require``).
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime

from common.contract import LABEL, MANIFEST, MAX_VERSION, MODEL_FILE, PROBABILITIES, is_version_name
from serving.batching import Batcher, BatchingPolicy
from serving.errors import NotFound, RepositoryError
from serving.manifest import Manifest, check_graph, first_line, read_file, read_manifest
from serving.metrics import REFUSED_VERSIONS, ModelMetrics
from serving.pipeline import Call

log = logging.getLogger(__name__)

VersionKey = tuple[str, int]  # (model name, version)


@dataclass(frozen=True)
class Prediction:
    """One model's answer for a batch: ``float32 [N,classes]`` and ``int64 [N]``."""

    probabilities: np.ndarray
    labels: np.ndarray


class ModelVersion:
    """A verified model version and its onnxruntime session, shared by all requests.

    ``predict`` is the one way to run the model: through the version's ``Batcher``, which
    coalesces concurrent requests into one call (the session releases the GIL and is safe to
    share between threads).
    """

    def __init__(self, manifest: Manifest, session: onnxruntime.InferenceSession,
                 policy: BatchingPolicy):
        self.manifest, self.name, self.version = manifest, manifest.name, manifest.version
        self.metrics = ModelMetrics(manifest.name, manifest.version, manifest.sha256)
        self.policy = policy  # how its batcher runs it
        run, name, outputs = session.run, manifest.inputs[0].name, [PROBABILITIES, LABEL]
        self._batcher = Batcher(  # not a method of self: that cycle kept an unloaded version's
            lambda images: run(outputs, {name: images}), policy, self.metrics,  # session (MBs)
            f"{self.name} version {self.version}")  # until the garbage collector's next full
        # pass, which a server's heap rarely gets to

    def predict(self, images: np.ndarray, call: Call | None = None) -> Prediction:
        """``uint8 [N,28,28]`` -> the model's probabilities and labels; blocks until its
        batch is computed (nothing is computed for a ``call`` that has ended)."""
        return Prediction(*self._batcher.predict(images, call))


class ModelRegistry:
    """The loaded model versions, by name and version.

    Changed only by ``add`` and ``remove`` (the repository watcher), each of which swaps in a
    new mapping in one assignment: a request sees the registry before or after a change, never
    in between, and keeps the version it got even if that version is removed meanwhile.
    """

    def __init__(self):
        self._models: dict[str, dict[int, ModelVersion]] = {}
        # (name, version) -> why it was refused, for the versions that failed verification
        # (changed only by set_refused)
        self.refused: dict[tuple[str, int], str] = {}

    def add(self, model: ModelVersion) -> None:
        """Adds (or replaces) a version; the newest version of a model is its default."""
        versions = {**self._models.get(model.name, {}), model.version: model}
        replaced = self._models.get(model.name, {}).get(model.version)
        if replaced is not None and replaced.manifest.sha256 != model.manifest.sha256:
            replaced.metrics.unloaded()  # its model_info series reads 0, the new one's 1
        models = {**self._models, model.name: dict(sorted(versions.items()))}
        self._models = dict(sorted(models.items()))

    def remove(self, name: str, version: int) -> None:
        """Removes a version; calls that already hold it finish with it."""
        models = {n: dict(versions) for n, versions in self._models.items()}
        removed = models.get(name, {}).pop(version, None)
        self._models = {n: versions for n, versions in models.items() if versions}
        if removed is not None:
            removed.metrics.unloaded()

    def set_refused(self, key: VersionKey, reason: str | None) -> None:
        """Records why version ``key`` was refused (None: it is not, or no longer), and puts
        how many of its model's are in the metrics: the log alone let a failed rollout pass
        unseen by alerts."""
        if reason is None:
            self.refused.pop(key, None)
        else:
            self.refused[key] = reason
        REFUSED_VERSIONS.labels(key[0]).set(sum(name == key[0] for name, _ in self.refused))

    @property
    def names(self) -> list[str]:
        return list(self._models)  # kept sorted by add and remove

    def versions(self, name: str) -> list[int]:
        """The loaded versions of ``name``, ascending ([] if none)."""
        return list(self._models.get(name, {}))

    def get(self, name: str, version: int = 0, at=("model", "version")) -> ModelVersion:
        """The model version, the newest if ``version`` is 0; NotFound names what exists, and
        the request's fields that gave the name and the version (``at``)."""
        if (versions := self._models.get(name)) is None:
            raise NotFound(f"{at[0]}: no model {name!r}; loaded models: {', '.join(self.names)}")
        version = version or max(versions)  # 0: the newest
        if version not in versions:
            raise NotFound(f"{at[1]}: model {name!r} has no version {version}; "
                           f"loaded versions: {', '.join(map(str, versions))}")
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


def load_repository(root: Path, policy: BatchingPolicy, intra_op_threads: int = 1) -> ModelRegistry:
    """Verifies and loads every model version under ``root``.

    A version that fails verification is refused with one log line and the others serve (as
    the repository watcher does later, so a restart serves what was served before it);
    RepositoryError if the repository is unusable or no version loads.
    """
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a directory "
                              "(fmnist-train --out DIR makes one)")
    try:
        present, skipped, _ = version_dirs(root)
    except OSError as error:
        raise RepositoryError(
            f"model repository {root}: cannot list it ({error.strerror})") from None
    for reason in skipped:
        log.warning("model repository entry skipped", extra={"fields": {"reason": reason}})
    if not present:
        raise RepositoryError(f"model repository {root} holds no model versions (expected {root}"
                              f"/<model>/<version>/{MODEL_FILE} + {MANIFEST}; run fmnist-train)")
    registry = ModelRegistry()
    for key in sorted(present):
        load_into(registry, present[key], policy, intra_op_threads)
    if not registry.list():
        raise RepositoryError(f"model repository {root}: no model version could be loaded: "
                              + "; ".join(registry.refused.values()))
    return registry


def load_into(registry: ModelRegistry, path: Path, policy: BatchingPolicy,
              intra_op_threads: int = 1) -> bool:
    """Loads the version at ``path`` into ``registry``; if it fails verification, logs why and
    records it in ``registry.refused``. Returns whether it loaded."""
    key = (path.parent.name, int(path.name))
    try:
        registry.add(load_version(path, policy, intra_op_threads))
    except RepositoryError as error:
        registry.set_refused(key, str(error))
        # a version replaced in place: the files loaded before keep serving, and the line says so
        before = registry.get(*key) if key[1] in registry.versions(key[0]) else None
        log.error("model version refused", extra={"fields": {
            "model": key[0], "version": key[1], "reason": str(error),
            **({"still_serving_sha256": before.manifest.sha256[:12]} if before else {})}})
        return False
    registry.set_refused(key, None)
    return True


def load_version(path: Path, policy: BatchingPolicy, intra_op_threads: int = 1) -> ModelVersion:
    """Loads one ``<model>/<version>`` directory after checking its manifest and sha256."""
    started = time.perf_counter()
    manifest = read_manifest(path)
    model_bytes = read_file(path / MODEL_FILE)
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
        session = onnxruntime.InferenceSession(model_bytes, options,
                                               providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several untyped errors for bad graphs
        raise RepositoryError(f"{path / MODEL_FILE}: onnxruntime cannot load it: "
                              f"{first_line(error)}") from None
    check_graph(path / MODEL_FILE, manifest, session)
    log.info("model loaded", extra={"fields": {
        "model": manifest.name, "version": manifest.version, "sha256": manifest.sha256[:12],
        "ms": round((time.perf_counter() - started) * 1000, 1)}})
    return ModelVersion(manifest, session, policy)


class Listing(NamedTuple):
    found: dict[VersionKey, Path]  # the version directories
    skipped: list[str]  # why each other entry that looked like a model or version was skipped
    unreadable: set[str]  # models whose folder could not be listed: their versions unknown


def version_dirs(root: Path) -> Listing:
    """The ``<root>/<model>/<version>`` directories (hidden entries skipped, versions named by
    an integer from 1 to 2**63-1, no leading 0), and what was skipped: a model folder that
    cannot be listed (a volume's lost+found), a version out of that range (0, 07). Start-up
    and the watcher both read the repository through this, so a restart serves what was
    served before it. OSError if ``root`` itself cannot be listed."""
    found, skipped, unreadable = {}, [], set()
    for model_dir in Path(root).iterdir():
        if model_dir.name.startswith("."):
            continue
        try:  # an error in one folder costs that folder only
            if not model_dir.is_dir():
                continue
            versions = [path for path in model_dir.iterdir()
                        if is_version_name(path.name) and path.is_dir()]
            if (config := model_dir / "config.pbtxt").is_file():
                skipped.append(f"{config}: Triton's model configuration, not read: every "
                               "version with a model.json serves, settings are flags (README's "
                               "'From Triton')")
        except OSError as error:
            skipped.append(f"{model_dir}: cannot read it ({error.strerror})")
            unreadable.add(model_dir.name)
            continue
        for path in versions:
            if not 1 <= int(path.name) <= MAX_VERSION or path.name != str(int(path.name)):
                skipped.append(f"{path}: a version is a number from 1 to 2**63-1, no leading 0")
            else:
                found[(model_dir.name, int(path.name))] = path
    return Listing(found, sorted(skipped), unreadable)
