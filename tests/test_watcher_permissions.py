"""A server that runs as an unprivileged user (as in the image, uid 10001) over a repository
other users write into: a version directory it may not list (another user's copy, mode 700)
is refused with one line, at start-up as later, and holds up no other version. (It stopped the
start-up with a traceback, and later failed every poll with one, rolling nothing out.)"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.server_process import server_process

NOBODY = 65534
SETPRIV = shutil.which("setpriv")


def _publish(root: Path, model: str, source: int, version: int, mode: int = 0o755) -> Path:
    """A copy of ``model``/``source`` as ``version`` (its model.json saying so), its directory
    of ``mode``, renamed into place."""
    staging = root / model / f".staging-{version}"
    shutil.copytree(root / model / str(source), staging)
    manifest = staging / "model.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": version}))
    staging.chmod(mode)
    return staging.rename(root / model / str(version))


@pytest.fixture
def shared_repository(model_repository):
    """A copy of the fixture repository that any user may read."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "repository"
        shutil.copytree(model_repository, root)
        for path in (Path(scratch), *root.rglob("*"), root):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root


def _served_by_nobody(root: Path):
    return server_process(root, "--workers", "1", "--poll-interval", "0.1", prefix=(
        SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"))


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not SETPRIV,
                                reason="needs root and setpriv, to run the server as another user")


@needs_root
def test_a_version_directory_it_cannot_list_at_start_up_is_refused(shared_repository):
    unreadable = _publish(shared_repository, "mlp", 1, 7, 0o700)
    with _served_by_nobody(shared_repository) as (process, logs):
        started = logs.wait_for("serving", timeout=30)[0]
        assert "mlp v7" not in started["models"] and "mlp v2" in started["models"]
        assert [line["reason"] for line in logs.matching("model version refused")] == [
            f"{unreadable / 'model.json'}: cannot read it (Permission denied)"]
        assert process.poll() is None


@needs_root
def test_a_version_directory_it_cannot_list_is_refused_once_and_holds_up_nothing(
        shared_repository):
    root = shared_repository
    with _served_by_nobody(root) as (process, logs):
        logs.wait_for("serving")
        unreadable = _publish(root, "mlp", 1, 7, 0o700)  # root's: nobody cannot list it
        logs.wait_for("model version refused", timeout=15)
        _publish(root, "mlp", 1, 8)  # published after it: rolled out all the same
        rolled_out = logs.wait_for("model version rolled out", timeout=30)
        assert [(line["model"], line["version"]) for line in rolled_out] == [("mlp", 8)]
        refused = logs.matching("model version refused")
        assert [(line["version"], line["reason"]) for line in refused] == [
            (7, f"{unreadable / 'model.json'}: cannot read it (Permission denied)")]
        assert [line for line in logs.lines if line["message"] in (
            None, "model repository poll failed")] == []
        unreadable.chmod(0o755)  # once it can be read, it is tried again, and loads
        assert [line["version"] for line in logs.wait_for(
            "model version rolled out", count=2, timeout=30)] == [8, 7]
        assert process.poll() is None
