"""Where ``fmnist score`` writes its --csv and --json: checked before the scoring, a standard
stream when the path names one, a file replaced whole, and a failure said in one line naming
the flag."""

import contextlib
import errno
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from serving.client.cli import UsageError


def write_json(path: Path, document: dict) -> TextIO | None:
    text = json.dumps(document, indent=2) + "\n"
    return write_file("--json", path, "the JSON's end", lambda f: f.write(text), whole=True)


def check_writable(named: str, path: Path) -> None:
    """Can ``path`` (--csv, --json, ``named`` as given: ``--csv x.csv``) be written? Not found
    out after the scoring. A named pipe is not opened: its reader took the check's close for
    the end, and the file then waited for another forever."""
    try:
        if str(path) == "-" and not sys.stdout:  # >&-: nowhere to write it
            raise UsageError(f"{named}: stdout is closed")
        if str(path) == "-":
            return
        if std_stream(path) or path.is_fifo():
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return
        existed = path.exists()
        open(path, "a").close()
        if not existed:  # a failed run leaves no empty file
            path.unlink()
    except OSError as error:
        raise UsageError(f"{named}: {error.strerror}") from None


def same_file(one: Path, other: Path) -> bool:
    if (stream := std_stream(one)) and stream is std_stream(other):  # "-", /dev/stdout
        return True
    with contextlib.suppress(OSError):  # one does not exist yet
        return os.path.samestat(os.stat(one), os.stat(other))
    return one.resolve() == other.resolve()


def std_stream(path: Path) -> TextIO | None:
    """sys.stdout (or stderr) when ``path`` is where it writes (/dev/stdout), or is "-" (as
    for other tools; it wrote a file named '-'): opened again, a file it went to was truncated
    and written from its start, under the summary. A stream closed when the command started
    (>&-) is None, passed over."""
    if str(path) == "-":
        return sys.stdout
    for stream in filter(None, (sys.stdout, sys.stderr)):
        with contextlib.suppress(OSError, ValueError):  # no such file; no file under the stream
            if os.path.samestat(os.stat(path), os.fstat(stream.fileno())):
                return stream
    return None


def write_file(flag: str, path: Path, end: str, write: Callable[[TextIO], None],
               whole: bool = False) -> TextIO | None:
    """Runs ``write`` on ``path`` opened (or on the standard stream it names, returned); if
    ``whole``, a file is written beside it and renamed over it (``_replacing``). A file
    that cannot be written fails the run in one line naming it: a full disk said Python's
    "[Errno 28] No space left on device", and a reader that stopped before ``end`` (`| head`,
    a named pipe's) nothing at all, exit 0 (cli's exit 0 is for the summary's reader)."""
    stream = std_stream(path)
    target = Path(os.path.realpath(path))  # a link's file, not the link
    try:
        if whole and not stream and os.access(target.parent, os.W_OK) and (
                target.is_file() or not target.exists()):  # not /dev/null, a pipe
            _replacing(target, write)
            return None
        with contextlib.nullcontext(stream) if stream else open(path, "w", newline="") as f:
            write(f)
            f.flush()
    except OSError as error:
        if stream:  # the rest of its buffer, flushed at exit, goes nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        if isinstance(error, BrokenPipeError):
            raise RuntimeError(f"{flag} {path}: its reader stopped before {end}") from None
        raise RuntimeError(f"{flag} {path}: {error.strerror or error}") from None
    return stream


def _replacing(path: Path, write: Callable[[TextIO], None]) -> None:
    """Runs ``write`` on a new file beside ``path``, then renames it over ``path`` (with its
    mode, if it was there): a stop or a full disk midway leaves ``path`` as it was, and
    nothing beside it. Opened for writing, it was emptied first, and a stop before the write
    left it so: a previous run's figures lost, none in their place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", newline="") as file:
            write(file)
        with contextlib.suppress(FileNotFoundError):
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
