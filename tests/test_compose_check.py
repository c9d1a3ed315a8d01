"""scripts/compose_check.py compares the service with onnxruntime on the version the service
serves: the newest by the server's own reading of the repository (serving.repository), which
skips what is not a version (07, 0, ²) where the checker took 07 for version 7 and compared the
served v1 with it."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from common.dataset import data_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compose_check.py"


def _compose_check():
    spec = importlib.util.spec_from_file_location("compose_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_newest_version_is_the_one_the_server_serves(repository_copy):
    mlp = repository_copy / "mlp"
    newest = max(int(path.name) for path in mlp.iterdir() if path.name.isdigit())
    for name in ("07", "0"):  # not versions to the server: skipped with a WARNING line
        shutil.copytree(mlp / str(newest), mlp / name)
    assert _compose_check().newest_version(repository_copy, "mlp") == mlp / str(newest)


def test_a_repository_without_the_baseline_is_said_in_one_line(repository_copy, test_set):
    """The baseline's version was looked up outside the check's error handling, in a folder
    that may not exist: FileNotFoundError's traceback."""
    shutil.rmtree(repository_copy / "baseline")
    result = subprocess.run([sys.executable, str(SCRIPT), "--target", "127.0.0.1:1",
                             "--model-repository", str(repository_copy), "--data-dir",
                             str(data_dir()), "--count", "2"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (
        1, f"compose check: {repository_copy / 'baseline'}: no version directory\n")
