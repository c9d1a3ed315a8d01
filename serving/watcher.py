"""Zero-downtime model rollout: polls the model repository and applies what changed.

A new version directory is verified and loaded on the watcher's thread, then added to the registry
in one step, so the newest version becomes the default atomically; a version that fails
verification is refused with one log line and the versions already loaded keep serving;
a removed version leaves the registry at once, and its session is freed when the calls still
holding it have finished (they hold a reference, new calls cannot get one). The last version of
a model the server cannot work without is never unloaded.

Writers must publish a version atomically (``training.repository`` assembles it in a hidden
``.staging-*`` directory and renames it into place); hidden entries are never looked at.
"""

import contextlib
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from serving.batching import BatchingPolicy
from serving.repository import ModelRegistry, VersionKey, load_into, version_dirs

log = logging.getLogger(__name__)


def _fingerprint(path: Path) -> tuple:
    """Changes when the files of a version directory are replaced, so a refused version that
    is repaired in place is tried again, and a loaded one replaced in place is loaded again."""
    files = []
    with contextlib.suppress(OSError):  # none listed (load_into says why): tried when readable
        # hidden entries are nobody's: a publishing run's .lock goes once the version is there
        for entry in sorted(entry for entry in path.iterdir() if entry.name[:1] != "."):
            with contextlib.suppress(OSError):
                info = entry.stat()
                # a copy keeping sizes and times (cp -p, rsync -a) still has a new ctime
                files.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return tuple(files)


class RepositoryWatcher:
    """Keeps ``registry`` equal to the verified versions present under ``root``."""

    def __init__(self, root: Path, registry: ModelRegistry, policy: BatchingPolicy, *,
                 intra_op_threads: int = 1, required: Iterable[str] = ()):
        self.root = Path(root)
        self.registry = registry
        self._policy = policy
        self._intra_op_threads = intra_op_threads
        self._required = frozenset(required)
        present = {}
        with contextlib.suppress(OSError):  # the first poll says why
            present = version_dirs(self.root).found
        # version -> the fingerprint of its files when it was refused (at start-up or later):
        # it is not tried again until they change
        self._refused = {key: _fingerprint(present[key]) for key in registry.refused
                         if key in present}
        self._loaded = {key: _fingerprint(path) for key, path in present.items()  # as loaded
                        if key not in self._refused}
        self._kept: set[VersionKey] = set()  # removed from disk, kept loaded (logged once)
        self._unlisted = False  # the last poll could not list the repository (logged once)

    def poll(self) -> None:
        """One pass: load what appeared, unload what disappeared (blocking: file reads and
        session creation; the registry swaps each change in atomically). What cannot be
        listed (the repository, a model's folder: a volume's hiccup) changes nothing."""
        try:
            listing = version_dirs(self.root)
        except OSError as error:
            if not self._unlisted:
                log.warning("model repository cannot be listed; the loaded versions keep "
                            "serving", extra={"fields": {"repository": str(self.root),
                                                         "error": error.strerror or str(error)}})
            self._unlisted = True
            return
        if self._unlisted:  # the warning's end
            self._unlisted = False
            log.info("model repository can be listed again")
        present = listing.found
        loaded = {(model.name, model.version) for model in self.registry.list()}
        for key in sorted(present):  # new, or replaced in place: loaded (again)
            if key not in loaded or _fingerprint(present[key]) != self._loaded.get(key):
                self._load(key, present[key])
        gone = {key for key in (loaded | self._refused.keys()) - present.keys()
                if key[0] not in listing.unreadable}  # (a folder not listed: unknown, not gone)
        for key in sorted(gone & loaded):
            self._unload(key)
        for key in gone & self._refused.keys():
            del self._refused[key]
            self.registry.set_refused(key, None)
        self._kept &= loaded - present.keys()

    def run(self, interval: float, stop: threading.Event) -> None:
        """Polls every ``interval`` seconds until ``stop`` is set; a failed poll is logged,
        not fatal."""
        while not stop.wait(interval):
            try:
                self.poll()
            except Exception:
                log.exception("model repository poll failed")

    def _load(self, key: VersionKey, path: Path) -> None:
        fingerprint = _fingerprint(path)
        if self._refused.get(key) == fingerprint:
            return
        if not load_into(self.registry, path, self._policy, self._intra_op_threads):
            self._refused[key] = fingerprint
            self._loaded.pop(key, None)  # the files it serves, if put back: loaded again
            return
        self._refused.pop(key, None)
        self._loaded[key] = fingerprint
        log.info("model version rolled out", extra={"fields": {"model": key[0], "version": key[1],
                 "default_version": self.registry.versions(key[0])[-1]}})

    def _unload(self, key: VersionKey) -> None:
        name, version = key
        if name in self._required and self.registry.versions(name) == [version]:
            if key not in self._kept:  # said once
                self._kept.add(key)
                log.warning("model version removed from disk but kept: it is the last of a "
                            "required model", extra={"fields": {"model": name, "version": version}})
            return
        self.registry.remove(name, version)
        self._loaded.pop(key, None)
        log.info("model version unloaded", extra={"fields": {"model": name, "version": version}})
