"""Reads the Fashion-MNIST test set from its IDX files, with numpy only (no TensorFlow): the
client scores it, the server's web page shows its images. ``check_content`` is also training's
check of every IDX file it reads.

The files come from the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist/) or ``$FMNIST_DATA_DIR``, gzipped or not.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from common.contract import DATA_SHA256
from common.idx import read_idx

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
HOW_TO_GET = "install the Debian package dataset-fashion-mnist or set FMNIST_DATA_DIR"


def data_dir() -> Path:
    return Path(os.environ.get("FMNIST_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


def check_content(path: Path, name: str, content: bytes, fix: str = HOW_TO_GET) -> None:
    """ValueError, ending with ``fix``, unless ``content`` (an IDX file's, decompressed) is
    Fashion-MNIST's ``name``: a model trained, or a score taken, on altered data would mislead.
    Training and the client both check here."""
    digest = hashlib.sha256(content).hexdigest()
    if digest != DATA_SHA256[name]:
        raise ValueError(f"{path}: not Fashion-MNIST's {name} (corrupt, or other data): its "
                         f"content SHA-256 is {digest[:16]}..., expected "
                         f"{DATA_SHA256[name][:16]}...; {fix}")


def read_array(path: Path, name: str) -> np.ndarray:
    """The IDX file ``name`` (uint8 values) as an array of its declared shape; ValueError if
    its content is not Fashion-MNIST's."""
    idx = read_idx(path)
    check_content(path, name, idx.content)
    return np.frombuffer(idx.content, dtype=np.uint8, offset=idx.offset).reshape(idx.shape)


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{directory / name}[.gz] not found; {HOW_TO_GET}")


def load_test_set(directory: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images ``uint8 [N,28,28]`` and their labels ``uint8 [N]``."""
    directory = Path(directory).expanduser() if directory else data_dir()  # --data-dir=~/x
    images = read_array(_find(directory, TEST_IMAGES), TEST_IMAGES)
    labels = read_array(_find(directory, TEST_LABELS), TEST_LABELS)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} test images but {len(labels)} labels")
    return images, labels
