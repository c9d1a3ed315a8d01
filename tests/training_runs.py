"""How the training tests run ``fmnist-train``: as a user's shell would, in a subprocess."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from common.contract import MANIFEST

MODELS = ("softmax", "mlp", "baseline")


def run_training(*flags: str, env: dict[str, str] | None = None,
                 preexec_fn=None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # as from a user's shell: tf2onnx sets TF_CPP_MIN_LOG_LEVEL in this process's environment
    clean_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FMNIST_") and k != "TF_CPP_MIN_LOG_LEVEL"
    }
    return subprocess.run(
        [sys.executable, "-m", "training", *flags],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=clean_env | (env or {}),
        preexec_fn=preexec_fn,
        cwd=cwd,
    )


def manifest(out: Path, name: str, version: int) -> dict:
    return json.loads((out / name / str(version) / MANIFEST).read_text())


@contextlib.contextmanager
def unremovable(directory: Path):
    """``directory``'s entries cannot be removed till the block ends, by root too (immutable,
    chattr: root passes any mode) as by another user (no write permission)."""
    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    else:
        directory.chmod(0o500)
    try:
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        else:
            directory.chmod(0o755)
