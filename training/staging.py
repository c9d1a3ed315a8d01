"""A version being written: a hidden staging directory in its model's directory, and how a
later run tells one that a run killed outright (SIGKILL, the OOM killer, a power cut) left
from one whose run lives or one copied in by hand (README, "A killed run")."""

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

from common.contract import is_version_name

STAGING = ".staging-"  # a version being written, under a hidden name the server skips
LOCK = ".lock"  # in a staging directory: locked (flock) by its run while the run lives
FRESH_LOCK = f"{LOCK}-new"  # the lock before it takes its name, locked
OURS = re.compile(re.escape(STAGING) + "[a-z0-9_]{8}")  # tempfile.mkdtemp's names: not by hand
# one of a run's own without its .lock younger than this may be a live run's, before its lock
LOCKED_WITHIN_S = 60.0


def hold_lock(staging: Path) -> IO:
    """``staging``'s lock, held (flock) until closed or the process ends, however it ends (the
    kernel frees it): a later run removes a staging directory whose lock is free. Locked before
    it takes its name, so no run finds it free while its run lives."""
    fresh = staging / FRESH_LOCK
    lock = open(fresh, "x")  # noqa: SIM115 (held until discard closes it)
    fcntl.flock(lock, fcntl.LOCK_EX)
    fresh.rename(staging / LOCK)
    return lock


class Abandoned(NamedTuple):
    """What ``remove_abandoned`` did with one a killed run left: removed it (no ``error``),
    or not, for ``error``; or, its lock unreadable (``known`` false), left it alone, as whether
    its run lives is not known. ``locked``: it had a lock, found free (else it was empty)."""

    path: Path
    error: OSError | None = None
    known: bool = True
    locked: bool = True


def remove_abandoned(model_dir: Path) -> list[Abandoned]:
    """Removes the staging directories in ``model_dir`` that a run left when it was killed
    (SIGKILL, the OOM killer, a power cut): those whose lock is free; returns each, and each
    it could not remove or tell, with its error (another user's files, an immutable one, an
    unreadable lock: said by the caller, not skipped without a word). One whose run lives is
    left alone, as is one without a lock (copied there by hand: README, Kubernetes) unless
    it is named as a run names its own and is empty or holds only a free .lock-new (a run
    killed as it made its lock or after it deleted it, removing the directory). A free
    lock in a published version (a run killed between the rename and the lock's deletion) is
    deleted, and returned as one."""
    found = []
    published = [lock.parent for lock in model_dir.glob(f"*/{LOCK}")
                 if is_version_name(lock.parent.name)]
    for staging in sorted([*model_dir.glob(f"{STAGING}*"), *published]):
        try:
            lock = lock_of(staging)
            with open(lock) if lock else contextlib.nullcontext() as held:
                if held:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: lives
                if staging in published:
                    found.append(Abandoned(staging / LOCK, error_of(Path.unlink, staging / LOCK)))
                else:
                    found.append(Abandoned(staging, error_of(remove_staging, staging),
                                           locked=lock is not None))
        except (BlockingIOError, FileNotFoundError, NotADirectoryError):  # a file: not ours
            continue
        except OSError as error:
            found.append(Abandoned(staging, error, known=False))
    return found


def lock_of(staging: Path) -> Path | None:
    """The lock that tells whether ``staging``'s run lives: its .lock, or in one of a run's own
    its .lock-new, if that is all it holds; None in an empty one of a run's own, which a run
    killed as it made it or removed it left; either only once older than a live run's can be
    (another run's, made a moment ago, was removed under it: that run failed)."""
    names = os.listdir(staging)  # NotADirectoryError: a file, not a run's
    if not OURS.fullmatch(staging.name) or names not in ([], [FRESH_LOCK]):
        return staging / LOCK
    if time.time() - staging.stat().st_mtime < LOCKED_WITHIN_S:  # perhaps a live run's,
        return staging / LOCK  # before its lock is locked (open, then flock): left alone
    return staging / FRESH_LOCK if names else None


def remove_staging(staging: Path) -> None:
    """Removes ``staging``, its lock last: one that cannot be removed whole is still known as
    a killed run's (rmtree could take the lock first); an OSError names the whole path
    (rmtree's name only the last part)."""
    for parent, directories, files in os.walk(staging, topdown=False):
        for name in files:
            if (parent, name) != (str(staging), LOCK):
                os.unlink(os.path.join(parent, name))
        for name in directories:
            os.rmdir(os.path.join(parent, name))
    (staging / LOCK).unlink(missing_ok=True)  # none: renamed back once it had gone
    staging.rmdir()


def error_of(action: Callable[[Path], None], path: Path) -> OSError | None:
    """``action(path)``; the OSError that stopped it, if one did, returned (not raised)."""
    try:
        action(path)
    except OSError as error:
        return error
    return None
