"""Writes model versions into the model repository (Triton / TF Serving layout).

``<root>/<name>/<version>/model.onnx`` plus ``model.json``, the manifest serving reads. A version
directory is assembled under a hidden temporary name and renamed into place, so a server
watching the repository never sees a half-written version, an existing version is never
overwritten, and a number once published is never given again.
"""

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from common.contract import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    IMAGES,
    LABEL,
    MANIFEST,
    MODEL_FILE,
    NUM_CLASSES,
    PROBABILITIES,
)
from training.preprocessing import PREPROCESSING

INPUTS = [{"name": IMAGES, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}]
OUTPUTS = [
    {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, NUM_CLASSES]},
    {"name": LABEL, "datatype": "INT64", "shape": [-1]},
]


HIGHEST = ".highest-version"  # the highest version ever published: numbers are never reused


def existing_versions(root: Path, name: str) -> list[int]:
    """The version numbers present for ``name``, ascending: every entry with a number as its
    name, a directory or not (a stray file "2" takes number 2 too)."""
    model_dir = Path(root) / name
    if not model_dir.is_dir():
        return []
    names = (p.name for p in model_dir.iterdir())
    return sorted(int(name) for name in names if name.isascii() and name.isdigit())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Staged:
    """A version written whole under a hidden name in its model's directory, not yet
    published: ``publish`` gives it its number, ``discard`` removes it."""

    model_dir: Path
    directory: Path
    document: dict[str, Any]

    def publish(self) -> Path:
        """Renames the staged directory to the next version number, one past the highest
        present or ever published (a deleted version's number, a rollback, is not given
        again: a server that loaded it would never see the new model), and returns it."""
        with open(self.model_dir / HIGHEST, "a+") as highest:
            fcntl.flock(highest, fcntl.LOCK_EX)  # publishers of this model, one at a time
            highest.seek(0)
            recorded = int(highest.read().strip() or 0)
            version = max([recorded, *existing_versions(self.model_dir.parent,
                                                         self.model_dir.name)]) + 1
            self.document |= {"version": version, "created_at": datetime.datetime.now(
                datetime.UTC).isoformat(timespec="seconds")}
            (self.directory / MANIFEST).write_text(json.dumps(self.document, indent=2) + "\n")
            self.directory.rename(self.model_dir / str(version))
            highest.seek(0)
            highest.truncate()
            highest.write(f"{version}\n")
        return self.model_dir / str(version)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def stage_version(root: Path, name: str, model: onnx.ModelProto,
                  manifest: dict[str, Any]) -> Staged:
    """Writes ``model`` and its manifest under a hidden name in ``root/name``; an OSError names
    the file it could not write, and leaves nothing behind.

    ``manifest`` supplies what only the caller knows (``framework``, ``training``, ``metrics``,
    ``dataset``, ``description``); the name, tensor specs, classes, preprocessing and sha256 are
    filled in here, the version and creation time when it is published.
    """
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        onnx.save_model(model, staging / MODEL_FILE)
        document = {
            "name": name,
            "version": None,
            "description": manifest.get("description", ""),
            "inputs": INPUTS,
            "outputs": OUTPUTS,
            "classes": list(CLASS_NAMES),
            "preprocessing": PREPROCESSING,
            "sha256": sha256_file(staging / MODEL_FILE),
            "created_at": None,
            **{k: manifest.get(k, {}) for k in ("framework", "training", "metrics", "dataset")},
        }
        os.chmod(staging, 0o755)
        os.chmod(staging / MODEL_FILE, 0o644)  # a server running as another user reads them
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise OSError(error.errno, error.strerror or str(error),
                      str(error.filename or staging / MODEL_FILE)) from None
    return Staged(model_dir, staging, document)


def write_version(root: Path, name: str, model: onnx.ModelProto, manifest: dict[str, Any]) -> Path:
    """Writes ``model`` as the next version of ``name`` and returns its directory."""
    staged = stage_version(root, name, model, manifest)
    try:
        return staged.publish()
    except BaseException:
        staged.discard()
        raise
