"""Loads and verifies the Fashion-MNIST IDX files, and splits off the validation set.

The files are looked for, in order, in ``$FMNIST_DATA_DIR``, the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``), the Keras cache
(``~/.keras/datasets/fashion-mnist/``) and last Keras' own download (needs the internet).

Each file is checked by the SHA-256 of its *decompressed* IDX content: Debian rewrites the gzip
headers (file name and time stamp stripped), so the ``.gz`` bytes differ from Zalando's originals
while the data inside is identical; hashing the content accepts both and nothing else. The values
below were computed from the Debian files, whose deflate streams rebuilt with Zalando's gzip
header reproduce the MD5s published by Zalando (see README, "Training"); they are in
``common.contract``, and ``common.dataset.check_content`` checks them here and for the client.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.contract import CLASS_NAMES, DATA_SHA256, IMAGE_SHAPE
from common.dataset import check_content, how_to_get, idx_path
from common.idx import dimensions, read_idx

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path("~/.keras/datasets/fashion-mnist")
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
HOW_TO_GET = how_to_get("--data-dir")
IMAGES_MAGIC = 2051  # IDX: unsigned byte data, 3 dimensions
LABELS_MAGIC = 2049  # IDX: unsigned byte data, 1 dimension


@dataclass(frozen=True)
class IdxFile:
    """One of the four files: its name, expected item count and content SHA-256 (the one
    ``common.dataset.check_content`` checks, named in the manifests)."""

    filename: str
    count: int
    content_sha256: str

    @property
    def name(self) -> str:  # as gunzip leaves it
        return self.filename.removesuffix(".gz")

    @property
    def is_images(self) -> bool:
        return "images" in self.filename


TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = (
    IdxFile(f"{name}.gz", count, DATA_SHA256[name]) for name, count in (
        ("train-images-idx3-ubyte", 60000), ("train-labels-idx1-ubyte", 60000),
        ("t10k-images-idx3-ubyte", 10000), ("t10k-labels-idx1-ubyte", 10000)))
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


class DatasetError(Exception):
    """The data cannot be used; the message names the file, what was expected and the fix."""


@dataclass(frozen=True)
class Dataset:
    """The raw uint8 images [N,28,28] and labels [N], plus where they came from: the
    directory and the name of each file read (FILES' order), gzipped or not."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Path
    files: tuple[str, ...]

    def checksums(self) -> dict:
        """Where the data came from and each file's content SHA-256, for manifests and report
        (named as read: a report naming the .gz of files read gunzipped named files not there)."""
        return {
            "name": "Fashion-MNIST",
            "source": str(self.source),
            "content_sha256": {name: spec.content_sha256
                               for name, spec in zip(self.files, FILES, strict=True)},
        }


def candidate_dirs() -> list[Path]:
    """The local directories searched, in order."""
    dirs = [DEBIAN_DIR, KERAS_CACHE_DIR.expanduser()]
    if os.environ.get("FMNIST_DATA_DIR"):
        dirs.insert(0, Path(os.environ["FMNIST_DATA_DIR"]).expanduser())
    return dirs


def read_verified(path: Path, spec: IdxFile) -> np.ndarray:
    """Reads one IDX file, gzipped or not, checking it is complete, intact and the expected one."""
    if not path.is_file():
        raise DatasetError(f"{path} (or, gunzipped, {spec.name}): missing (one of the four "
                           f"Fashion-MNIST files); {HOW_TO_GET}")
    try:
        idx = read_idx(path, dimensions(spec.is_images))
    except (OSError, ValueError) as error:  # ValueError names the file; OSError's str does too
        raise DatasetError(f"{error}; {HOW_TO_GET}") from None
    if spec.is_images:
        expected = (IMAGES_MAGIC, spec.count, *IMAGE_SHAPE)
    else:
        expected = (LABELS_MAGIC, spec.count)
    header = (idx.magic, *idx.shape)
    if header != expected:
        raise DatasetError(
            f"{path}: IDX header (magic, dimensions) {header}, expected {expected}; {HOW_TO_GET}"
        )
    try:
        check_content(path, spec.name, idx.content, HOW_TO_GET)
    except ValueError as error:  # corrupt, or other data
        raise DatasetError(str(error)) from None
    return np.frombuffer(idx.content, dtype=np.uint8, offset=idx.offset).reshape(idx.shape)


def download_with_keras() -> Path:
    """Last resort for users who are online: Keras' own copy into its cache directory."""
    from training.models import import_tensorflow_quietly

    try:
        import_tensorflow_quietly()  # Keras' import: TensorFlow's C++ lines, before the error
        from keras.utils import get_file

        paths = [
            get_file(
                spec.filename,
                origin=KERAS_ORIGIN + spec.filename,
                cache_subdir="datasets/fashion-mnist",
            )
            for spec in FILES
        ]
    except Exception as error:  # any failure (offline, proxy, disk) means: not available
        searched = ", ".join(str(d) for d in candidate_dirs())
        # Keras raises a bare Exception whose words say why ("URL fetch failure on URL: None --
        # [Errno -3] Temporary failure in name resolution"); its name alone said nothing
        reason = " ".join(str(error).split()) or type(error).__name__
        if type(error) is not Exception:
            reason = f"{type(error).__name__}: {reason}"
        raise DatasetError(
            f"Fashion-MNIST not found (searched {searched}) and the Keras download failed "
            f"({reason}); {HOW_TO_GET}"
        ) from None
    return Path(paths[0]).parent


def find_data_dir() -> Path:
    """The first searched directory holding any of the files (a partial copy is an error
    reported per file, rather than silently using another copy), or Keras' download."""
    explicit = os.environ.get("FMNIST_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    for directory in candidate_dirs():
        if any(idx_path(directory, spec.name).exists() for spec in FILES):
            return directory
    return download_with_keras()


def load(data_dir: Path | None = None) -> Dataset:
    """Loads the four verified files from ``data_dir`` or the first place they are found."""
    # ~ expanded: bash leaves it alone in --data-dir=~/x, as an env file does in FMNIST_DATA_DIR;
    # absolute: the manifests and the report name it, read from any working directory
    directory = Path(os.path.abspath(Path(data_dir).expanduser() if data_dir
                                     else find_data_dir()))
    paths = [idx_path(directory, spec.name) for spec in FILES]
    x_train, y_train, x_test, y_test = map(read_verified, paths, FILES)
    return Dataset(x_train, y_train, x_test, y_test, directory,
                   tuple(path.name for path in paths))


def check_every_class(labels: np.ndarray, what: str) -> None:
    """DatasetError unless ``labels`` hold every class: a model fitted without one would not
    answer it (the baseline's graph would even have fewer outputs than model.json says)."""
    missing = sorted(set(range(len(CLASS_NAMES))) - set(np.unique(labels).tolist()))
    if missing:
        raise DatasetError(
            f"{what} holds {len(CLASS_NAMES) - len(missing)} of the {len(CLASS_NAMES)} classes "
            f"(missing: {', '.join(CLASS_NAMES[label] for label in missing)}); every class "
            "must be learned: take a larger subset")


def check_training_part(count: int, validation_fraction: float, flags: str) -> None:
    """DatasetError, naming ``flags``, unless holding ``validation_fraction`` of ``count``
    images out leaves a training image per class: scikit-learn's own error ("The train_size =
    5 should be greater or equal to the number of classes = 10") named its parameters."""
    held_out = math.ceil(validation_fraction * count)  # as train_test_split rounds it
    if count - held_out < len(CLASS_NAMES):
        fix = "take a larger subset or" if "--train-subset" in flags else "give"
        raise DatasetError(
            f"{flags} leaves {count - held_out} training images beside the {held_out} held out "
            f"for validation, fewer than the {len(CLASS_NAMES)} classes; every class must be "
            f"learned: {fix} a smaller --validation-split")


def check_validation_part(count: int, flags: str) -> None:
    """DatasetError, naming ``flags``, unless the split held out as many validation images as
    there are classes: with one, a model at validation accuracy 1.0 was "no better than always
    answering one class", after its fit."""
    if count < len(CLASS_NAMES):
        fix = "take a larger subset or give" if "--train-subset" in flags else "give"
        raise DatasetError(
            f"{flags} holds out {count} validation image{'s' * (count > 1)}, fewer than the "
            f"{len(CLASS_NAMES)} classes: its accuracy (early stopping, "
            f"--min-validation-accuracy) would judge nothing; {fix} a larger --validation-split")


def split_train_validation(
    images: np.ndarray, labels: np.ndarray, validation_fraction: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``train_test_split`` stratified by class -> (x_train, x_val, y_train, y_val).

    Stratification is dropped only for tiny subsets where it is impossible (a class with a
    single image, or fewer validation images than classes).
    """
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    can_stratify = counts[counts > 0].min() > 1 and validation_fraction * len(labels) >= len(
        counts[counts > 0]
    )
    return train_test_split(
        images,
        labels,
        test_size=validation_fraction,
        random_state=seed,
        stratify=labels if can_stratify else None,
    )
