"""A published version survives a power cut: its files, its directory and the rename that
publishes it are on disk before the run says it published (training.repository)."""

import os
from pathlib import Path

from common.contract import MANIFEST, MODEL_FILE
from tests.conftest import tiny_classifier
from training.repository import HIGHEST, write_version


def test_a_version_is_synced_to_disk_before_and_after_its_rename(tmp_path, monkeypatch):
    """Nothing was fsynced: after a power cut a published version (the rename on disk, its
    files' blocks not) could be a directory of empty files, which the server refuses, and
    .highest-version could lose the number it had given."""
    events = []
    fsync, rename = os.fsync, os.rename

    def synced(fd: int) -> None:
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).relative_to(tmp_path)))
        fsync(fd)

    def renamed(source, target) -> None:
        events.append(("rename", Path(source).relative_to(tmp_path),
                       Path(target).relative_to(tmp_path)))
        rename(source, target)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "rename", renamed)
    write_version(tmp_path, "mlp", tiny_classifier(1), {})
    events = [event for event in events  # not the staging directory's lock taking its name
              if event[0] == "fsync" or event[2].parent == Path("mlp")]
    (staging,) = [source for kind, source, *_ in events if kind == "rename"]
    assert staging.parent == Path("mlp") and staging.name.startswith(".staging-")
    assert events == [
        ("fsync", staging / MANIFEST), ("fsync", staging / MODEL_FILE),  # the files,
        ("fsync", staging),  # their names in their directory,
        ("rename", staging, Path("mlp/1")),  # published,
        ("fsync", Path("mlp") / HIGHEST),  # the number it took,
        ("fsync", Path("mlp")),  # the rename (and .highest-version's name)
    ]
