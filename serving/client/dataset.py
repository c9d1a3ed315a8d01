"""Reads the Fashion-MNIST test set from its IDX files, with numpy only (no TensorFlow).

The files come from the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist/) or ``$FMNIST_DATA_DIR``, gzipped or not.
"""

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_UINT8 = 0x08


def data_dir() -> Path:
    return Path(os.environ.get("FMNIST_DATA_DIR") or DEFAULT_DATA_DIR)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (uint8 payload) as an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != IDX_UINT8:
        raise ValueError(f"{path}: not an IDX file of uint8")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for {shape}, "
                         f"got {payload.size}")
    return payload.reshape(shape)


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{directory / name}[.gz] not found; install the Debian package dataset-fashion-mnist "
        "or set FMNIST_DATA_DIR"
    )


def load_test_set(directory: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images ``uint8 [N,28,28]`` and their labels ``uint8 [N]``."""
    directory = directory or data_dir()
    images = read_idx(_find(directory, TEST_IMAGES))
    labels = read_idx(_find(directory, TEST_LABELS))
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} test images but {len(labels)} labels")
    return images, labels
