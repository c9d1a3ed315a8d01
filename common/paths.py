"""The one way the command lines (fmnist-train, fmnist-serve, fmnist) take a path they are
given: a leading ``~`` is a home folder, wherever the shell left it; an empty one is refused."""

import argparse
import os
from pathlib import Path

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def home_path(text: str) -> Path:
    """An argparse ``type``: ``text`` as a path whose leading ``~`` (``~NAME``) is the home
    folder (NAME's), as a shell makes it of a word it sees alone: quoted, after ``--csv=``, or
    in an env var (a compose file's), the shell leaves it, and ``--csv "~/p.csv"`` wrote into a
    folder named ``~``. A ``~NAME`` of no user is refused: pathlib's expanduser raised
    RuntimeError (fmnist-train's traceback), and a folder named ``~NAME`` is what this
    undoes. An empty ``text`` (a script's unset "$REPO") is refused: it was the current folder,
    where `fmnist-train --out ""` trained."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got '' (. is the current folder)")
    path = os.path.expanduser(text)
    if path.startswith("~"):  # left as it was: no such user (or no home at all)
        home = text.partition("/")[0]
        user = f"a user {home[1:]!r}" if home != "~" else "this process's user"
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}: {home} is the home "
                                         f"folder of {user}, and there is none here")
    return Path(path)
