"""Where the server writes at run time (the metrics of worker processes): /dev/shm, which is
memory and stays writable on read-only root file systems such as the compose service's, or
else the system's temporary directory."""

import os

SHARED_MEMORY = "/dev/shm"


def scratch_parent() -> str | None:
    """The parent for the server's temporary directories; None: tempfile's default."""
    return SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK | os.X_OK) else None
