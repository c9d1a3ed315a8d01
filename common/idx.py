"""Reads IDX files, the format of the Fashion-MNIST data, with the standard library only: both
training and the client read them, and the client must not need numpy's import to know a file is
wrong. Callers make the array: ``np.frombuffer(idx.content, np.uint8, idx.offset)``."""

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from common.contract import IMAGE_SHAPE

UNSIGNED_BYTE = 0x08  # the IDX type code of uint8 values, the only type the data set uses


def dimensions(images: bool) -> int:
    """The dimensions of a Fashion-MNIST IDX file: images ``[N,28,28]``, labels ``[N]``."""
    return 1 + len(IMAGE_SHAPE) if images else 1


@dataclass(frozen=True)
class Idx:
    """An IDX file's dimensions and its whole content; the values start at ``offset``."""

    shape: tuple[int, ...]
    content: bytes

    @property
    def magic(self) -> int:
        """The header's first number: the type code and the number of dimensions."""
        return UNSIGNED_BYTE << 8 | len(self.shape)

    @property
    def offset(self) -> int:
        return 4 + 4 * len(self.shape)


def read_idx(path: Path, dims: int | None = None) -> Idx:
    """An IDX file of uint8 values, gunzipped if its name ends in ``.gz``, of ``dims``
    dimensions if given.

    ValueError naming the file if it is not one, has other dimensions, holds more or fewer
    values than its header says, or is a damaged ``.gz``; OSError if it cannot be read.
    """
    content = path.read_bytes()
    if path.suffix == ".gz":
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
            raise ValueError(f"{path}: not a complete gzip file ({error})") from None
    ndim = content[3] if len(content) >= 4 else 0
    if content[:3] != bytes([0, 0, UNSIGNED_BYTE]) or len(content) < 4 + 4 * ndim:
        raise ValueError(f"{path}: not an IDX file of uint8")
    if dims is not None and ndim != dims:  # else read as a count of values: a misleading one
        def said(n: int) -> str:
            return f"{UNSIGNED_BYTE << 8 | n} ({n} dimension{'s' * (n != 1)})"
        raise ValueError(f"{path}: IDX magic number {said(ndim)}, expected {said(dims)}")
    idx = Idx(struct.unpack_from(f">{ndim}I", content, 4), content)
    values = len(content) - idx.offset
    if values != math.prod(idx.shape):
        raise ValueError(f"{path}: expected {math.prod(idx.shape)} values for {idx.shape}, "
                         f"got {values}")
    return idx
