"""Turns the files given to ``fmnist classify`` into ``uint8 [N,28,28]`` images the way
Fashion-MNIST has them: light object on a black background, centred in 28x28 (a picture as
``common.pictures`` converts it, as the HTTP API's /v1/classify does)."""

import contextlib
import functools
import io
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from common.contract import IMAGE_SHAPE, PIXELS
from common.pictures import fit_picture, pad_picture, pillow


def load_npy(path: Path, opened: BinaryIO | None = None) -> np.ndarray:
    """A ``.npy`` array of uint8 (or integers 0..255) shaped [28,28], [N,28,28] or [N,784],
    N >= 1; read from ``opened`` if given (standard input's bytes, for "-")."""
    npy = np.lib.format
    with contextlib.nullcontext(opened) if opened else open(path, "rb") as file:
        try:  # numpy took any other file for a pickle, and said to load it with allow_pickle=
            version = npy.read_magic(file)
        except ValueError:
            raise ValueError(f"{path}: not a .npy file (NumPy's array format)") from None
        header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        try:  # numpy's words: "EOF: reading array header, expected 118 bytes got 10",
            # "malformed node or string on line 1: <ast.Name object at 0x7fe2b75e7190>"
            shape, _, dtype = header(file)
            if min(shape, default=0) < 0:  # numpy lets them by, then its reader refuses them
                raise ValueError
        except ValueError:
            raise ValueError(f"{path}: a damaged .npy file, or cut short (its header)") from None
        if not np.issubdtype(dtype, np.integer):  # objects too, before numpy refuses them so
            raise ValueError(f"{path}: expected uint8 pixels, got {dtype}")
        # before numpy reads them: it first took room for as many as the header says (a header
        # of 73 GiB over 784 bytes: "Unable to allocate 73.0 GiB for an array ...")
        values_at = file.tell()
        if math.prod(shape) * dtype.itemsize > file.seek(0, io.SEEK_END) - values_at:
            raise ValueError(f"{path}: a .npy array cut short (fewer values than its header "
                             "says)")
        file.seek(0)
        array = np.load(file, allow_pickle=False)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path}: expected pixels in 0..255, got {array.min()}..{array.max()}")
    if array.shape == IMAGE_SHAPE:
        array = array[None]
    elif array.ndim == 2 and array.shape[1] == PIXELS:
        array = array.reshape(-1, *IMAGE_SHAPE)
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{path}: expected shape [28,28], [N,28,28] or [N,784], "
                         f"got {list(array.shape)}")
    if not len(array):  # as the server says it
        raise ValueError(f"{path}: expected at least 1 image, got 0")
    return array.astype(np.uint8)


def is_npy(path: Path) -> bool:
    """A ``.npy`` array (taken as it is), else a picture file."""
    return path.suffix.lower() == ".npy"


@functools.cache
def _image_suffixes() -> frozenset[str]:
    """The suffixes of the files a folder given to classify holds to be classified: those of
    the formats Pillow opens, and .npy."""
    Image = pillow()  # noqa: N806 (Pillow's name)
    return frozenset({".npy", *(suffix for suffix, kind in Image.registered_extensions().items()
                                if kind in Image.OPEN)})


def _opened_folders(paths: list[Path]) -> Iterator[Path]:
    """``paths``, each folder as the image files in it, by name: not its subfolders, nor its
    hidden files (a shell's DIR/* leaves them out too)."""
    for path in paths:
        if str(path) == "-" or not path.is_dir():
            yield path
            continue
        try:
            inside = sorted(entry for entry in path.iterdir() if not entry.name.startswith(".")
                            and entry.suffix.lower() in _image_suffixes() and entry.is_file())
        except OSError as error:  # unreadable: as a file is named
            raise ValueError(f"{path}: {error.strerror}") from None
        if not inside:  # as an .npy array of no images is refused
            raise ValueError(f"{path}: no image files in it")
        yield from inside


def _standard_input() -> io.BytesIO:
    """What standard input holds, for "-" (a picture, or a .npy array by its first bytes)."""
    if sys.stdin is None:  # <&-
        raise ValueError("-: standard input is closed")
    if sys.stdin.isatty():  # typed at a prompt: the read waited, silent, as if hung
        raise ValueError("-: standard input is a terminal; pipe a picture in: "
                         "fmnist classify - < shoe.png")
    if not (data := sys.stdin.buffer.read()):  # (a failed `curl -sf URL |`: no picture said)
        raise ValueError("-: standard input is empty: no picture nor .npy array came")
    return io.BytesIO(data)


def _unreadable(picture: Path | io.BytesIO, error: Exception) -> str:
    """What is wrong with a picture file Pillow could not read, in words: Pillow's named no
    fault ("cannot identify image file '<_io.BytesIO ...>'", "Truncated File Read", "Image
    size (196000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS
    attack."), and its MemoryError was taken for a damaged file."""
    Image = pillow()  # noqa: N806 (Pillow's name)
    if isinstance(error, Image.DecompressionBombError):  # Pillow's own limit, at twice this
        return (f"over the {2 * Image.MAX_IMAGE_PIXELS:,} pixels Pillow decodes; scale it down "
                "first")
    if isinstance(error, MemoryError):  # under that limit, over what this machine lets it have
        return f"{_dimensions(picture)}more than the memory here can decode; scale it down first"
    head = b""  # the first bytes, by which Image.open tells a format
    with contextlib.suppress(OSError):
        if isinstance(picture, io.BytesIO):
            head = picture.getvalue()[:16]
        else:
            with open(picture, "rb") as file:
                head = file.read(16)
    if not head:
        return "an empty file, not a picture"
    kind = _format(head)  # (a format's whose header Pillow could not read is "unidentified")
    if kind or not isinstance(error, Image.UnidentifiedImageError):
        return f"a damaged {f'{kind} ' if kind else ''}image, or cut short"
    return "not a picture (in no format Pillow reads), nor a .npy array"


def _dimensions(picture: Path | io.BytesIO) -> str:
    """"WIDTHxHEIGHT pixels, " as the picture's header says them, or "" if it cannot be read."""
    with contextlib.suppress(Exception), pillow().open(picture) as image:
        return f"{image.width}x{image.height} pixels, "
    return ""


def _format(head: bytes) -> str:
    """The format Pillow takes a file beginning with ``head`` for, as Image.open tells it (its
    tests of a few bytes may raise on fewer: it passes over those), or ""."""
    Image = pillow()  # noqa: N806 (Pillow's name)
    Image.init()
    for name in Image.ID:
        with contextlib.suppress(Exception):
            if (accept := Image.OPEN[name][1]) and accept(head):
                return name
    return ""


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def load_images(paths: list[Path], invert: bool = False) -> tuple[np.ndarray, list[str], int]:
    """All images of ``paths`` (``.npy`` files may hold many; a folder's image files), a
    display name for each, a picture's saying so if the model sees it on a light background,
    and how many were pictures (what ``invert`` inverts), not arrays: "-" is either, known
    once read."""
    batches, names, pictures = [], [], 0
    for path in _opened_folders(paths):
        stdin = _standard_input() if str(path) == "-" else None  # as --csv - is stdout
        try:  # a picture's border as the model sees it, but for the padding (black)
            npy = stdin.getvalue().startswith(b"\x93NUMPY") if stdin else is_npy(path)
            fitted, trimmed = (None, False) if npy else fit_picture(stdin or path, invert)
            batch = load_npy(path, stdin) if fitted is None else pad_picture(fitted)[None]
        except Exception as error:  # Pillow's and numpy's messages do not say which file
            if isinstance(error, OSError) and error.strerror:  # not "[Errno 2] ...: 'x.png'"
                raise ValueError(f"{path}: {error.strerror}") from None
            said = str(error) if npy else _unreadable(stdin or path, error)
            raise ValueError(said if str(path) in said else f"{path}: {said}") from None
        names += [f"{path}[{i}]" for i in range(len(batch))] if len(batch) > 1 else [str(path)]
        pictures += fitted is not None
        if (fitted is not None and not trimmed and min(fitted.size)
                and _border(np.asarray(fitted)).mean() > 127):
            # Fashion-MNIST's border is black (the test set's average 95 at most); a picture
            # thinner than a pixel at 28x28 (a 3000x1 line) is fitted into nothing; one trimmed
            # had black edges, and its border now is the object's
            names[-1] += f"  (a light background: {'drop' if invert else 'try'} --invert)"
        batches.append(batch)
    return np.concatenate(batches), names, pictures
