"""Writes model versions into the model repository (Triton / TF Serving layout).

``<root>/<name>/<version>/model.onnx`` plus ``model.json``, the manifest serving reads. A version
directory is assembled under a hidden temporary name and renamed into place, so a server
watching the repository never sees a half-written version, an existing version is never
overwritten, and a number once published is never given again. Each is synced to disk
(fsync) before and after the rename: a power cut leaves it whole or not there. A run killed
outright leaves its staging directory, which the next run removes (training.staging).
"""

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import onnx

from common.contract import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    IMAGES,
    LABEL,
    MANIFEST,
    MAX_VERSION,
    MODEL_FILE,
    NUM_CLASSES,
    PROBABILITIES,
    is_version_name,
)
from training.preprocessing import PREPROCESSING
from training.staging import LOCK, STAGING, error_of, hold_lock, remove_staging

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
    return sorted(int(name) for name in names if is_version_name(name))


def make_directory(path: Path, mode: int | None = 0o755) -> None:
    """``path`` and its missing parents, those made ``mode`` whatever the umask (None: the
    umask's): 0755, a server running as another user lists the repository and its models'
    directories (a version's files are made readable for it too). Each made is synced into its
    parent, so that after a power cut a version or report synced under it is still there. A
    directory that was there keeps its mode."""
    missing = [p for p in (Path(path), *Path(path).parents) if not p.exists()]
    Path(path).mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        if mode is not None:
            os.chmod(made, mode)
        synced(made.parent)


def new_report_dir(out: Path) -> Path:
    """DIR/reports/<UTC time>, made now; -2, -3, ... if another run of the same second has it."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    make_directory(out / "reports")  # and the repository, 0755 if made here
    path, taken = out / "reports" / stamp, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            taken += 1
            path = out / "reports" / f"{stamp}-{taken}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def synced(path: Path) -> None:
    """Puts ``path`` on disk (fsync): a file's contents, a directory's names. A directory whose
    file system cannot fsync one (EINVAL: some FUSE and CIFS mounts) is no failure: it keeps
    its names as it can; a file refused is one."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno != errno.EINVAL or not stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise
    finally:
        os.close(descriptor)


def synced_directory(directory: Path) -> None:
    """``directory``'s files, then their names, on disk: after a power cut they are whole (a
    version's, published by a rename after this; a report's, before its versions are)."""
    for path in sorted(directory.iterdir()):
        synced(path)
    synced(directory)


@dataclass(eq=False)  # by identity
class Staged:
    """A version's model file under a hidden name in its model's directory, and the manifest
    it will have, not yet published (``publishing`` numbers it and writes the manifest);
    ``discard`` removes it and frees its lock."""

    model_dir: Path
    directory: Path
    document: dict[str, Any]
    lock: IO | None = None

    def discard(self) -> None:
        error_of(remove_staging, self.directory)  # as rmtree's ignore_errors, its lock last
        if self.lock:
            self.lock.close()


@contextlib.contextmanager
def publishing(staged: list[Staged]) -> Iterator[list[Path]]:
    """Numbers each staged version (one per model) one past the highest present or ever
    published, writes its manifest, and yields the directories they will have; when the block
    ends without error, renames them all into place (those done are renamed back if one
    fails), else publishes none. Every model's lock is held throughout, so the block may write
    what names them (the report).

    A number once published is never given again: a server that had loaded a deleted version
    (a rollback) would never see another model published under its number."""
    if len({version.model_dir for version in staged}) != len(staged):
        raise ValueError("publishing: one version per model (a second lock would wait forever)")
    with contextlib.ExitStack() as held:
        targets, renamed = {}, []  # in the models' order: two runs lock them in the same order
        try:
            for version in sorted(staged, key=lambda version: version.model_dir):
                path = version.model_dir / HIGHEST
                highest = held.enter_context(os.fdopen(os.open(
                    path, os.O_RDWR | os.O_CREAT, 0o644), "r+"))
                fcntl.flock(highest, fcntl.LOCK_EX)  # publishers of this model, one at a time
                highest.seek(0)
                number = next_version(version.model_dir, highest.read())
                version.document |= {"version": number, "created_at": datetime.datetime.now(
                    datetime.UTC).isoformat(timespec="seconds")}
                manifest = version.directory / MANIFEST
                manifest.write_text(json.dumps(version.document, indent=2) + "\n")
                os.chmod(manifest, 0o644)  # a server running as another user reads it
                targets[version] = (highest, path, version.model_dir / str(number))
            yield [targets[version][2] for version in staged]
            for version in targets:  # on disk before published: after a power cut, a version
                synced_directory(version.directory)  # is whole or not there
            for version, (_, _, target) in targets.items():
                version.directory.rename(target)
                renamed.append(version)
            for _, _, target in targets.values():  # only now: a run killed before the renames
                (target / LOCK).unlink()  # left staging directories known as a killed run's
            for highest, _, target in targets.values():
                highest.seek(0)  # numbers only grow: written over, then cut, never empty
                highest.write(f"{target.name}\n")
                highest.truncate()  # flushes the text first
                os.fsync(highest.fileno())  # a number once given stays given after a crash
                synced(target.parent)  # the rename itself
        except BaseException:
            for version in renamed:  # back under its staging name: all or none
                targets[version][2].rename(version.directory)
            for highest, path, _ in targets.values():
                if os.fstat(highest.fileno()).st_size == 0:  # made by this run: not left behind
                    path.unlink(missing_ok=True)
            raise
        finally:
            for version in staged:
                version.discard()  # those not renamed


class RepositoryError(ValueError):
    """The model repository cannot take a new version; the message names the file and what
    to do (said in one line, as a data error is, not as a crash)."""


def next_version(model_dir: Path, recorded: str | None = None) -> int:
    """One past the highest version present in ``model_dir`` or ``recorded`` (its
    ``.highest-version``'s text, read if None); RepositoryError if that is past what the
    protocols' int64 version fields carry: the server would skip it, and the run's model never
    be served."""
    path = model_dir / HIGHEST
    if recorded is None:
        recorded = path.read_text() if path.exists() else ""
    number = max([highest_recorded(recorded, path),
                  *existing_versions(model_dir.parent, model_dir.name)]) + 1
    if number > MAX_VERSION:
        raise RepositoryError(f"{model_dir}: version {number - 1} is taken and no number is left "
                         f"(a version is at most {MAX_VERSION}, the protocols' int64)")
    return number


def highest_recorded(text: str, path: Path) -> int:
    """The number a ``.highest-version`` file holds (0 if empty); a corrupt one is named."""
    text = text.strip()
    if text and not is_version_name(text):
        raise RepositoryError(f"{path}: expected the highest version published, got {text[:40]!r}; "
                         "put the number back (or delete the file)")
    return int(text or 0)


def stage_version(root: Path, name: str, model: onnx.ModelProto,
                  manifest: dict[str, Any]) -> Staged:
    """Writes ``model`` under a hidden name in ``root/name`` and prepares its manifest; an
    OSError names the file it could not write, and leaves nothing behind.

    ``manifest`` supplies what only the caller knows (``framework``, ``training``, ``metrics``,
    ``dataset``, ``description``); the name, tensor specs, classes, preprocessing and sha256 are
    filled in here, the version and creation time when it is published.
    """
    model_dir = Path(root) / name
    make_directory(model_dir)
    staged = Staged(model_dir, Path(tempfile.mkdtemp(prefix=STAGING, dir=model_dir)), {})
    staging = staged.directory
    try:
        staged.lock = hold_lock(staging)
        onnx.save_model(model, staging / MODEL_FILE)
        staged.document = {
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
        os.chmod(staging / MODEL_FILE, 0o644)  # a server running as another user reads it
    except BaseException as error:  # a stop (Ctrl-C, SIGTERM) too: nothing left behind
        staged.discard()
        if not isinstance(error, OSError):
            raise
        raise OSError(error.errno, error.strerror or str(error),
                      str(error.filename or staging / MODEL_FILE)) from None
    return staged


def write_version(root: Path, name: str, model: onnx.ModelProto, manifest: dict[str, Any]) -> Path:
    """Writes ``model`` as the next version of ``name`` and returns its directory."""
    with publishing([stage_version(root, name, model, manifest)]) as (target,):
        return target
