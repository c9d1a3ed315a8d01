"""A run killed outright (SIGKILL, the OOM killer) leaves its staging directory; the next run
of the model removes it, and never one whose run lives or one copied in by hand."""

import subprocess
import sys
from pathlib import Path

import onnx

from tests.conftest import tiny_classifier
from tests.training_runs import run_training
from training.repository import existing_versions

# stages a version, says where, and publishes it when told (a run between fit and publish)
RUN = """
import sys
from pathlib import Path
import onnx
from training.repository import publishing, stage_version
staged = stage_version(Path(sys.argv[1]), "baseline", onnx.load(sys.argv[2]), {})
print(staged.directory, flush=True)
sys.stdin.readline()
with publishing([staged]) as (target,):
    pass
print(target, flush=True)
"""


def test_a_killed_runs_staging_directory_is_removed_by_the_next_run_and_a_live_ones_kept(
        tmp_path):
    """A SIGKILLed run's `.staging-*` directory stayed for ever, a model's worth of disk each
    time, and the README asked to delete them "when no run is going", which nobody can know."""
    model, repository = tmp_path / "tiny.onnx", tmp_path / "repository"
    onnx.save_model(tiny_classifier(1), model)
    killed, live = (subprocess.Popen([sys.executable, "-c", RUN, str(repository), str(model)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    for _ in range(2))
    try:
        left, living = (Path(run.stdout.readline().strip()) for run in (killed, live))
        killed.kill()  # SIGKILL: nothing of it runs, its staging directory stays
        killed.wait(timeout=60)
        by_hand = repository / "baseline" / ".staging-3"  # README, Kubernetes: a copy, then mv
        by_hand.mkdir()
        (by_hand / "model.onnx").write_bytes(b"being copied")
        result = run_training("--out", str(repository), "--models", "baseline",
                              "--train-subset", "500", "--progress", "none")
        assert result.returncode == 0, result.stderr
        assert [line for line in result.stdout.splitlines() if line.startswith("removed ")] == [
            f"removed {left}: left by a run that was killed (its lock is free)"]
        assert not left.exists()
        assert living.is_dir() and (by_hand / "model.onnx").read_bytes() == b"being copied"
        published, _ = live.communicate("publish\n", timeout=60)  # the live run, unharmed
        assert live.returncode == 0
        assert published.split() == [str(repository / "baseline" / "2")]
        assert existing_versions(repository, "baseline") == [1, 2]
    finally:
        for run in (killed, live):
            run.kill()
            run.wait(timeout=60)
