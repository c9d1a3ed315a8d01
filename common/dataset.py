"""Reads the Fashion-MNIST test set from its IDX files, with numpy only (no TensorFlow): the
client scores it, the server's web page shows its images.

The files come from the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist/) or ``$FMNIST_DATA_DIR``, gzipped or not.
"""

import os
from pathlib import Path

import numpy as np

from common.idx import read_idx

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def data_dir() -> Path:
    return Path(os.environ.get("FMNIST_DATA_DIR") or DEFAULT_DATA_DIR)


def read_array(path: Path) -> np.ndarray:
    """An IDX file (uint8 values) as an array of its declared shape."""
    idx = read_idx(path)
    return np.frombuffer(idx.content, dtype=np.uint8, offset=idx.offset).reshape(idx.shape)


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
    images = read_array(_find(directory, TEST_IMAGES))
    labels = read_array(_find(directory, TEST_LABELS))
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} test images but {len(labels)} labels")
    return images, labels
