"""Where the server writes at run time (the metrics of worker processes): /dev/shm, which is
memory and stays writable on read-only root file systems such as the compose service's, or
else the system's temporary directory."""

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

SHARED_MEMORY = "/dev/shm"
ABANDONED_AFTER_S = 60.0  # younger directories may not be held yet by their maker


@contextlib.contextmanager
def held_directory(prefix: str):
    """A fresh directory, removed at the end, and locked (flock) while its maker or a child
    that inherited the lock lives: one that no process holds was left by a server killed
    with SIGKILL (in Kubernetes a memory emptyDir outlives the container), and the next
    server removes it."""
    parent = SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK | os.X_OK) else tempfile.gettempdir()
    for path in Path(parent).glob(prefix + "*"):
        _remove_if_abandoned(path)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as directory:
        held = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX)
            yield directory
        finally:
            os.close(held)


def _remove_if_abandoned(path: Path) -> None:
    with contextlib.suppress(OSError):  # another user's, or removed meanwhile
        if time.time() - path.stat().st_mtime < ABANDONED_AFTER_S:
            return
        probe = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a server holds it
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(probe)
