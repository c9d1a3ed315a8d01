"""Turns files into ``uint8 [N,28,28]`` images the way Fashion-MNIST has them: light object on
a black background, centred in 28x28."""

from pathlib import Path

import numpy as np

from common.contract import IMAGE_SHAPE, PIXELS
from serving.codecs.images import load_png


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array of uint8 (or integers 0..255) shaped [28,28], [N,28,28] or [N,784]."""
    array = np.load(path, allow_pickle=False)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: expected uint8 pixels, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path}: expected pixels in 0..255, got {array.min()}..{array.max()}")
    if array.shape == IMAGE_SHAPE:
        array = array[None]
    elif array.ndim == 2 and array.shape[1] == PIXELS:
        array = array.reshape(-1, *IMAGE_SHAPE)
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{path}: expected shape [28,28], [N,28,28] or [N,784], "
                         f"got {list(array.shape)}")
    return array.astype(np.uint8)


def load_images(paths: list[Path], invert: bool = False) -> tuple[np.ndarray, list[str]]:
    """All images of ``paths`` (``.npy`` files may hold many) and a display name for each."""
    batches, names = [], []
    for path in paths:
        if path.suffix.lower() == ".npy":
            batch = load_npy(path)
            names += [f"{path}[{i}]" for i in range(len(batch))] if len(batch) > 1 else [str(path)]
        else:
            batch = load_png(path, invert)[None]
            names.append(str(path))
        batches.append(batch)
    return np.concatenate(batches), names
