"""Turns files into ``uint8 [N,28,28]`` images the way Fashion-MNIST has them: light object on
a black background, centred in 28x28 (``fmnist classify``, and the HTTP API's /v1/classify)."""

import contextlib
import functools
import io
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from common.contract import IMAGE_SHAPE, PIXELS


@functools.cache
def pillow():
    """Pillow's ``Image``, imported on first use, without its decompression-bomb warning: it
    went to stderr past any log format, and the HTTP API refuses a picture over its own,
    lower limit before decoding it (a person's own file is theirs to decode)."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def load_png(path: Path, invert: bool = False) -> np.ndarray:
    """Any image file Pillow reads, any size or mode -> grayscale, upright as a viewer shows it
    (a photo's EXIF orientation applied), fitted into 28x28 keeping its aspect ratio, padded
    with black. ``invert`` for dark objects on a light background. A transparent background
    becomes black in the result, whatever colour lies under it."""
    return _padded(_fitted(path, invert))


def _padded(fitted) -> np.ndarray:
    from PIL import ImageOps

    return np.asarray(ImageOps.pad(fitted, IMAGE_SHAPE, color=0), dtype=np.uint8)


def _fitted(path: Path, invert: bool):
    """load_png's picture fitted into 28x28, before its padding."""
    from PIL import ImageOps

    Image = pillow()  # noqa: N806 (Pillow's name)
    with Image.open(path) as image:
        # in place: otherwise a whole copy of a picture it does not turn (an 8000x8000 RGB
        # PNG of 200 KB peaked at 580 MB, now 335)
        ImageOps.exif_transpose(image, in_place=True)
        upright = image
        if upright.mode.startswith("I;16"):  # Pillow's "L" would clip 16-bit values at 255
            upright = Image.fromarray((np.asarray(upright) >> 8).astype(np.uint8))
        elif upright.mode in ("I", "F"):  # 32 bits, clipped too: floats went black
            upright = Image.fromarray(_eight_bit(np.asarray(upright)))
        transparent = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
        gray = upright.convert("LA" if transparent else "L")
    if transparent:  # over what the inversion turns black, whatever colour lies under it;
        # fitted first: a photo's size in full RGBA copies took hundreds of MB
        gray = ImageOps.pad(gray, IMAGE_SHAPE, method=Image.Resampling.LANCZOS, color=(0, 0))
        flat = Image.new("L", IMAGE_SHAPE, 255 if invert else 0)
        flat.paste(gray.getchannel("L"), mask=gray.getchannel("A"))
        gray = flat
    if invert:
        gray = ImageOps.invert(gray)
    return ImageOps.contain(gray, IMAGE_SHAPE, method=Image.Resampling.LANCZOS)


def _eight_bit(pixels: np.ndarray) -> np.ndarray:
    """32-bit pixels as 0..255: floats 0..1 (their usual range) if they keep within it, else
    0..255; integers 0..255, or if any is over 255 0..65535 (16-bit values)."""
    floats = pixels.dtype.kind == "f"
    pixels = np.nan_to_num(pixels.astype(np.float64))
    top = pixels.max(initial=0)
    scale = 255 if floats and top <= 1 else 1 / 257 if not floats and top > 255 else 1
    return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)


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
        dtype = header(file)[2]
        if not np.issubdtype(dtype, np.integer):  # objects too, before numpy refuses them so
            raise ValueError(f"{path}: expected uint8 pixels, got {dtype}")
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
    return io.BytesIO(sys.stdin.buffer.read())


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
            fitted = None if npy else _fitted(stdin or path, invert)
            batch = load_npy(path, stdin) if fitted is None else _padded(fitted)[None]
        except Exception as error:  # Pillow's and numpy's messages do not say which file
            if isinstance(error, OSError) and error.strerror:  # not "[Errno 2] ...: 'x.png'"
                raise ValueError(f"{path}: {error.strerror}") from None
            said = str(error).replace(repr(stdin), "(standard input)")  # not "<_io.BytesIO ..."
            raise ValueError(said if str(path) in said else f"{path}: {said}") from None
        names += [f"{path}[{i}]" for i in range(len(batch))] if len(batch) > 1 else [str(path)]
        pictures += fitted is not None
        if fitted is not None and min(fitted.size) and _border(np.asarray(fitted)).mean() > 127:
            # Fashion-MNIST's border is black (the test set's average 95 at most); a picture
            # thinner than a pixel at 28x28 (a 3000x1 line) is fitted into nothing
            names[-1] += f"  (a light background: {'drop' if invert else 'try'} --invert)"
        batches.append(batch)
    return np.concatenate(batches), names, pictures
