"""A run killed outright (SIGKILL, the OOM killer) leaves its staging directory; the next run
of the model removes it, and never one whose run lives or one copied in by hand."""

import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from tests.conftest import tiny_classifier
from tests.training_runs import run_training, unremovable
from training.repository import existing_versions, stage_version
from training.staging import LOCK, LOCKED_WITHIN_S, Abandoned, remove_abandoned

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


def test_a_killed_runs_staging_directory_that_cannot_be_removed_is_named_in_a_warning(tmp_path):
    """One that rmtree could not remove (another user's files, an immutable one) was skipped
    without a word, for ever; and rmtree, stopped part way, could take its .lock first, after
    which every run took it for a copy by hand and left it alone."""
    repository = tmp_path / "repository"
    killed = stage_version(repository, "baseline", tiny_classifier(1), {})
    killed.lock.close()  # as a SIGKILL frees it: left by a run that was killed
    stuck = killed.directory / "stuck"
    stuck.mkdir()
    (stuck / "file").write_bytes(b"")
    with unremovable(stuck):
        result = run_training("--out", str(repository), "--models", "baseline",
                              "--train-subset", "500", "--progress", "none")
        assert result.returncode == 0, result.stderr
        error = os.strerror(1 if os.geteuid() == 0 else 13)  # EPERM (immutable), EACCES
        assert result.stderr.splitlines() == [
            f"fmnist-train: warning: cannot remove {killed.directory}, left by a run that was "
            f"killed (its lock is free): {error}: {stuck / 'file'}"]
        assert (killed.directory / LOCK).exists()  # still known as a killed run's
    result = run_training("--out", str(repository), "--models", "baseline",
                          "--train-subset", "500", "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert f"removed {killed.directory}: left by a run" in result.stdout
    assert not killed.directory.exists()



# a run killed (SIGKILL: nothing of it runs after) as it renames its version into place, as
# it deletes the lock of the version renamed into place, as it removes its model file while it
# discards the version (a stop, then a SIGKILL), as it gives its new lock its name (the staging
# directory made, the lock not yet), or as it removes the staging directory, its lock gone
KILLED = """
import os, signal, sys
from pathlib import Path
import onnx
from training.repository import MODEL_FILE, publishing, stage_version
from training.staging import LOCK, STAGING

def killed_when(name, when):
    function = getattr(os, name)
    def call(*args, **kwargs):
        if when(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)
    setattr(os, name, call)

if sys.argv[3] == "locking":
    killed_when("rename", lambda source, target: Path(target).name == LOCK)
staged = stage_version(Path(sys.argv[1]), "baseline", onnx.load(sys.argv[2]), {})
if sys.argv[3] in ("publishing", "published"):
    if sys.argv[3] == "publishing":
        killed_when("rename", lambda source, target: Path(target).name.isdigit())
    else:
        killed_when("unlink", lambda path, *_: Path(path).parent.name.isdigit())
    with publishing([staged]):
        pass
else:
    if sys.argv[3] == "discard":
        killed_when("unlink", lambda path, *_: Path(path).name == MODEL_FILE)
    else:
        killed_when("rmdir", lambda path, *_: Path(path).name.startswith(STAGING))
    staged.discard()
"""


@pytest.mark.parametrize("killed_in", ["publishing", "discard", "locking", "removing"])
def test_a_run_killed_as_it_publishes_or_discards_leaves_a_staging_directory_known_as_abandoned(
        tmp_path, killed_in):
    """The lock was deleted before the rename that publishes, and rmtree could delete it first
    when a version was discarded: a run killed in between left a staging directory without
    one, which every later run took for a copy by hand and kept for ever. So did a run killed
    as it made its lock (the directory there, the lock under its name .lock-new) and one
    killed as it removed its staging directory, its lock deleted (left empty)."""
    model, repository = tmp_path / "tiny.onnx", tmp_path / "repository"
    onnx.save_model(tiny_classifier(1), model)
    killed = subprocess.run([sys.executable, "-c", KILLED, str(repository), str(model),
                             killed_in], check=False)
    assert killed.returncode == -9
    (left,) = (repository / "baseline").glob(".staging-*")
    assert (left / LOCK).exists() == (killed_in in ("publishing", "discard"))
    if killed_in in ("locking", "removing"):  # no .lock: perhaps a live run's, until old
        assert remove_abandoned(repository / "baseline") == []
        os.utime(left, (time.time() - LOCKED_WITHIN_S,) * 2)
    assert remove_abandoned(repository / "baseline") == [
        Abandoned(left, locked=killed_in != "removing")]
    assert not left.exists() and existing_versions(repository, "baseline") == []


def test_an_empty_staging_directory_removed_says_it_had_no_lock(tmp_path, capsys):
    """An empty one of a run's own name, a minute old, removed as a killed run's, was said
    "(its lock is free)": it had none. What was found is said."""
    from training.console import say_removed

    left = tmp_path / "baseline" / ".staging-abc_1234"
    left.mkdir(parents=True)
    os.utime(left, (time.time() - LOCKED_WITHIN_S,) * 2)
    say_removed(remove_abandoned(tmp_path / "baseline"))
    assert capsys.readouterr().out == (f"removed {left}: left by a run that was killed (empty, "
                                       f"without a lock, untouched for over 60 s)\n")
    assert not left.exists()


def test_a_live_runs_staging_directory_made_a_moment_ago_and_not_yet_locked_is_left_alone(
        tmp_path):
    """Empty or holding only .lock-new, of a run's own name, as a run killed as it made its lock
    or removed the directory leaves one, and as a live run's is between mkdtemp and its flock:
    it was removed, and that run failed."""
    made = tmp_path / "baseline" / ".staging-abc_1234"
    made.mkdir(parents=True)
    assert remove_abandoned(tmp_path / "baseline") == []
    (made / ".lock-new").touch()  # opened, not yet locked
    assert remove_abandoned(tmp_path / "baseline") == []
    assert sorted(made.iterdir()) == [made / ".lock-new"]


def test_a_staging_directory_whose_lock_cannot_be_read_is_named_in_a_warning(tmp_path):
    """One whose lock could not be opened (another user's, unreadable; a directory) was
    skipped without a word, for ever: whether its run lives is not known, so it stays, said."""
    repository = tmp_path / "repository"
    left = stage_version(repository, "baseline", tiny_classifier(1), {})
    left.lock.close()
    lock = left.directory / LOCK
    if os.geteuid() == 0:  # root reads any file: a lock that is no file
        lock.unlink()
        lock.mkdir()
    else:
        lock.chmod(0)
    error = os.strerror(21 if os.geteuid() == 0 else 13)  # EISDIR, EACCES
    result = run_training("--out", str(repository), "--models", "baseline",
                          "--train-subset", "500", "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"fmnist-train: warning: left {left.directory} alone: its lock cannot be read, so "
        f"whether its run still lives is not known ({error}: {lock})"]
    assert lock.exists() and (left.directory / "model.onnx").exists()


def test_a_run_killed_between_publishing_and_deleting_the_lock_leaves_it_to_the_next_run(
        tmp_path):
    """Its empty .lock stayed in the published version for ever; the next run deletes it, and
    says so, as it removes a staging directory (the version itself is whole and served)."""
    model, repository = tmp_path / "tiny.onnx", tmp_path / "repository"
    onnx.save_model(tiny_classifier(1), model)
    killed = subprocess.run([sys.executable, "-c", KILLED, str(repository), str(model),
                             "published"], check=False)
    assert killed.returncode == -9
    lock = repository / "baseline" / "1" / LOCK
    assert lock.exists()
    result = run_training("--out", str(repository), "--models", "baseline",
                          "--train-subset", "500", "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert f"removed {lock}: left by a run that was killed (its lock is free)" in \
        result.stdout.splitlines()
    assert sorted(path.name for path in lock.parent.iterdir()) == ["model.json", "model.onnx"]
    assert existing_versions(repository, "baseline") == [1, 2]
