"""Reads the Fashion-MNIST test set from its IDX files, with numpy only (no TensorFlow): the
client scores it, the server's web page shows its images. ``check_content`` is also training's
check of every IDX file it reads.

The files come from the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist/) or ``$FMNIST_DATA_DIR``, gzipped or not.
"""

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np

from common.contract import DATA_SHA256
from common.idx import dimensions, read_idx
from common.paths import DEFAULT_DATA_DIR, home_path

TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def how_to_get(flag: str) -> str:
    """What to do when the files are missing or wrong, naming the flag the user may have given
    (the client's and training's --data-dir, the server's --test-images-dir)."""
    return ("install them with `apt-get install dataset-fashion-mnist`, or point "
            f"{flag} (or FMNIST_DATA_DIR) at a directory holding Fashion-MNIST's IDX files")


def data_dir() -> Path:
    """$FMNIST_DATA_DIR, its ~ the home's as a flag's (common.paths), else Debian's folder;
    ValueError naming the variable for a ~NAME of no user (pathlib raised RuntimeError, which
    the page's route and the client let through as a traceback)."""
    try:
        return home_path(os.environ.get("FMNIST_DATA_DIR") or str(DEFAULT_DATA_DIR))
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"FMNIST_DATA_DIR: {error}") from None


def check_content(path: Path, name: str, content: bytes, fix: str) -> None:
    """ValueError, ending with ``fix``, unless ``content`` (an IDX file's, decompressed) is
    Fashion-MNIST's ``name``: a model trained, or a score taken, on altered data would mislead.
    Training and the client both check here."""
    digest = hashlib.sha256(content).hexdigest()
    if digest != DATA_SHA256[name]:
        raise ValueError(f"{path}: not Fashion-MNIST's {name} (corrupt, or other data): its "
                         f"content SHA-256 is {digest[:16]}..., expected "
                         f"{DATA_SHA256[name][:16]}...; {fix}")


def read_array(path: Path, name: str, fix: str) -> np.ndarray:
    """The IDX file ``name`` (uint8 values) as an array of its declared shape; ValueError,
    ending with ``fix``, if its content is not Fashion-MNIST's."""
    idx = read_idx(path, dimensions(images=name == TEST_IMAGES))
    check_content(path, name, idx.content, fix)
    return np.frombuffer(idx.content, dtype=np.uint8, offset=idx.offset).reshape(idx.shape)


def idx_path(directory: Path, name: str) -> Path:
    """The IDX file ``name`` in ``directory``: gzipped, else as ``gunzip`` leaves it, else the
    gzipped name, which does not exist (its reader says so). Training and the client alike."""
    gzipped, plain = directory / f"{name}.gz", directory / name
    return plain if plain.exists() and not gzipped.exists() else gzipped


def _find(directory: Path, name: str, fix: str) -> Path:
    path = idx_path(directory, name)
    if not path.exists():
        raise FileNotFoundError(f"{directory / name}[.gz] not found; {fix}")
    return path


def load_test_set(directory: Path | None = None, flag: str = "--data-dir"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images ``uint8 [N,28,28]`` and their labels ``uint8 [N]``; errors say
    how to get them, naming ``flag``, the caller's option for ``directory``."""
    directory = Path(directory).expanduser() if directory else data_dir()  # --data-dir=~/x
    fix = how_to_get(flag)
    images = read_array(_find(directory, TEST_IMAGES, fix), TEST_IMAGES, fix)
    labels = read_array(_find(directory, TEST_LABELS, fix), TEST_LABELS, fix)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} test images but {len(labels)} labels")
    return images, labels
