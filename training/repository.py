"""Writes model versions into the model repository (Triton / TF Serving layout).

``<root>/<name>/<version>/model.onnx`` plus ``model.json``, the manifest serving reads. A version
directory is assembled under a hidden temporary name and renamed into place, so a server
watching the repository never sees a half-written version, and an existing version is never
overwritten.
"""

import datetime
import hashlib
import json
import os
import tempfile
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


def existing_versions(root: Path, name: str) -> list[int]:
    """The version numbers present for ``name``, ascending."""
    model_dir = Path(root) / name
    if not model_dir.is_dir():
        return []
    names = (p.name for p in model_dir.iterdir() if p.is_dir())
    return sorted(int(name) for name in names if name.isascii() and name.isdigit())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_version(root: Path, name: str, model: onnx.ModelProto, manifest: dict[str, Any]) -> Path:
    """Writes ``model`` as the next version of ``name`` and returns its directory.

    ``manifest`` supplies what only the caller knows (``framework``, ``training``, ``metrics``,
    ``dataset``, ``description``); the name, version, tensor specs, classes, preprocessing,
    sha256 and creation time are filled in here.
    """
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    onnx.save_model(model, staging / MODEL_FILE)
    while True:
        version = (existing_versions(root, name) or [0])[-1] + 1
        document = {
            "name": name,
            "version": version,
            "description": manifest.get("description", ""),
            "inputs": INPUTS,
            "outputs": OUTPUTS,
            "classes": list(CLASS_NAMES),
            "preprocessing": PREPROCESSING,
            "sha256": sha256_file(staging / MODEL_FILE),
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **{k: manifest.get(k, {}) for k in ("framework", "training", "metrics", "dataset")},
        }
        (staging / MANIFEST).write_text(json.dumps(document, indent=2) + "\n")
        os.chmod(staging, 0o755)
        try:
            staging.rename(model_dir / str(version))
        except OSError:  # another writer took this version number first: take the next one
            if (model_dir / str(version)).exists():
                continue
            raise
        return model_dir / str(version)
