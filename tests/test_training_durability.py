"""A published version survives a power cut: its files, its directory and the rename that
publishes it are on disk before the run says it published (training.repository)."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from common.contract import CLASS_NAMES, MANIFEST, MODEL_FILE
from tests.conftest import tiny_classifier
from training.report import ModelOutcome, write_report
from training.repository import HIGHEST, make_directory, new_report_dir, synced, write_version
from training.staging import LOCK


@pytest.fixture
def events(tmp_path, monkeypatch) -> list[tuple]:
    """Each fsync of the test, in order, as ("fsync", its path under tmp_path)."""
    events, fsync = [], os.fsync

    def synced(fd: int) -> None:
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).relative_to(tmp_path)))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", synced)
    return events


def test_a_version_is_synced_to_disk_before_and_after_its_rename(tmp_path, monkeypatch, events):
    """Nothing was fsynced: after a power cut a published version (the rename on disk, its
    files' blocks not) could be a directory of empty files, which the server refuses, and
    .highest-version could lose the number it had given."""
    rename = os.rename

    def renamed(source, target) -> None:
        events.append(("rename", Path(source).relative_to(tmp_path),
                       Path(target).relative_to(tmp_path)))
        rename(source, target)

    monkeypatch.setattr(os, "rename", renamed)
    write_version(tmp_path, "mlp", tiny_classifier(1), {})
    events[:] = [event for event in events  # not the staging directory's lock taking its name
                 if event[0] == "fsync" or event[2].parent == Path("mlp")]
    (staging,) = [source for kind, source, *_ in events if kind == "rename"]
    assert staging.parent == Path("mlp") and staging.name.startswith(".staging-")
    assert events == [
        ("fsync", Path(".")),  # the model's directory made (stage_version): its name,
        ("fsync", staging / LOCK),  # (deleted once published: synced as the others are)
        ("fsync", staging / MANIFEST), ("fsync", staging / MODEL_FILE),  # the files,
        ("fsync", staging),  # their names in their directory,
        ("rename", staging, Path("mlp/1")),  # published,
        ("fsync", Path("mlp") / HIGHEST),  # the number it took,
        ("fsync", Path("mlp")),  # the rename (and .highest-version's name)
    ]


def test_a_report_is_synced_to_disk_as_a_version_is(tmp_path, events):
    """The model files were fsynced, the report's not: after a power cut a published version
    could come with a truncated report.md, metrics.json or picture."""
    metrics = {"test_accuracy": 0.1, "onnx_max_abs_diff": 0.0, "onnx_label_agreement": 1.0,
               "per_class": {name: {"f1": 0.0, "recall": 0.0} for name in CLASS_NAMES},
               "confusion_matrix": np.eye(len(CLASS_NAMES), dtype=int).tolist()}
    training = {"train_size": 8, "validation_size": 2, "seed": 1, "epochs_run": 1}
    outcome = ModelOutcome("baseline", "baseline", np.zeros(4, np.int64), metrics, training)
    report_dir = tmp_path / "reports" / "now"
    report_dir.mkdir(parents=True)
    write_report(report_dir, [outcome], np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.uint8),
                 {"source": "x", "content_sha256": {}})
    files = sorted(path.relative_to(tmp_path) for path in report_dir.iterdir())
    assert len(files) == 4  # report.md, metrics.json, two pictures
    assert events == [("fsync", path) for path in (*files, Path("reports/now"),
                                                   Path("reports"))]


def test_a_directory_made_on_the_way_to_a_report_or_a_version_is_synced_into_its_parent(
        tmp_path, events):
    """A new reports/ (the first run into a repository), the repository itself or a model's
    directory was made and never synced into its parent: after a power cut the report synced
    under it, or a version, could be gone with the directory's name."""
    new_report_dir(tmp_path / "repository")
    assert events == [("fsync", Path(".")), ("fsync", Path("repository"))]  # their names
    events.clear()
    new_report_dir(tmp_path / "repository")  # made: nothing more to sync
    make_directory(tmp_path / "given" / "report", mode=None)  # --report-dir: the umask's mode
    assert events == [("fsync", Path(".")), ("fsync", Path("given"))]


def test_a_directory_whose_file_system_cannot_fsync_it_is_no_failure():
    """Some FUSE and CIFS mounts refuse a directory's fsync with EINVAL (procfs too, the one
    at hand): a run on one failed after its fit, publishing nothing. A file's fsync refused
    stays an error: its contents might not be on disk."""
    synced(Path("/proc/self"))
    with pytest.raises(OSError) as refused:
        synced(Path("/proc/self/status"))
    assert refused.value.errno == errno.EINVAL


def test_a_publish_that_fails_after_its_rename_leaves_no_staging_directory(tmp_path, monkeypatch):
    """Renamed back under its staging name once its lock was gone (the lock goes after the
    rename), the version was removed up to that lock, then left as an empty staging directory
    without one, which every later run takes for a copy by hand and keeps for ever."""
    fsync = os.fsync

    def refused(fd: int) -> None:  # the disk fails as .highest-version takes the number
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name == HIGHEST:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", refused)
    with pytest.raises(OSError, match="Input/output error"):
        write_version(tmp_path, "mlp", tiny_classifier(1), {})
    assert [path.name for path in (tmp_path / "mlp").iterdir() if path.name != HIGHEST] == []
