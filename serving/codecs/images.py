"""The batch size check every API applies (``check_batch_size``), and the domain API's
conversion of one ``bytes`` per image to ``uint8 [N,28,28]`` (of image files:
``common.pictures``, which the HTTP API uses too).

Messages name the field and the expected value, e.g.
``images[3]: expected 784 pixels (28x28 uint8), got 100``: pixels, true of each encoding that
reaches it (a gRPC image's bytes, the HTTP JSON image's integers).
"""

from collections.abc import Sequence

import numpy as np

from common.contract import IMAGE_BYTES, IMAGE_SHAPE
from serving.errors import InvalidArgument


def check_batch_size(count: int, max_request_images: int, field: str) -> None:
    """A batch holds at least one image and at most ``max_request_images``."""
    if count == 0:
        raise InvalidArgument(f"{field}: expected at least 1 image, got 0")
    if count > max_request_images:
        raise InvalidArgument(f"{field}: expected at most {max_request_images} images per "
                              f"request (the server's --max-request-images), got {count}")


def images_from_bytes(images: Sequence[bytes], max_request_images: int, field: str) -> np.ndarray:
    """One ``bytes`` of 784 pixels per image -> ``uint8 [N,28,28]`` (one copy, no Python loop
    over pixels)."""
    check_batch_size(len(images), max_request_images, field)
    lengths = np.fromiter(map(len, images), dtype=np.int64, count=len(images))
    wrong = np.flatnonzero(lengths != IMAGE_BYTES)
    if wrong.size:
        index = int(wrong[0])
        raise InvalidArgument(f"{field}[{index}]: expected {IMAGE_BYTES} pixels (28x28 uint8), "
                              f"got {lengths[index]}")
    pixels = np.frombuffer(b"".join(images), dtype=np.uint8)
    return pixels.reshape(len(images), *IMAGE_SHAPE)
