"""An image file as ``uint8 [28,28]`` the way Fashion-MNIST has its images: a light object on
a black background, filling 28x28 (its longer side), centred. ``fmnist classify``
(``serving.client.inputs``) and the HTTP API's /v1/classify (``serving.http.domain``) convert
alike with it: the page's drawings too. numpy up front, Pillow on first use: the server's and
the client's dependency, not training's."""

import functools
import warnings
from pathlib import Path

import numpy as np

from common.contract import IMAGE_SHAPE

# Fashion-MNIST's images were made of product photos trimmed of the edges within 5% of the
# corners' colour, then fitted, longest side 28, and centred (Xiao, Rasul and Vollgraf 2017,
# section 2): a picture here is trimmed of its edges that are black or within 5% of it.
BACKGROUND = 255 * 5 // 100


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
    (a photo's EXIF orientation applied), trimmed of its black edges, fitted into 28x28 keeping
    its aspect ratio, padded with black. ``invert`` for dark objects on a light background. A
    transparent background becomes black in the result, whatever colour lies under it."""
    return pad_picture(fit_picture(path, invert)[0])


def pad_picture(fitted) -> np.ndarray:
    from PIL import ImageOps

    return np.asarray(ImageOps.pad(fitted, IMAGE_SHAPE, color=0), dtype=np.uint8)


def fit_picture(path: Path, invert: bool):
    """load_png's picture fitted into 28x28, before its padding, and whether it was trimmed:
    its border then is the object's, not the picture's background."""
    from PIL import ImageChops, ImageOps

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
    if transparent:  # over what the inversion turns black, whatever colour lies under it, in
        # copies of one byte a pixel (full RGBA ones of a photo took hundreds of MB)
        light, alpha = gray.split()
        gray = ImageChops.multiply(ImageOps.invert(light) if invert else light, alpha)
    elif invert:
        gray = ImageOps.invert(gray)
    trimmed = _trimmed(gray)
    return (ImageOps.contain(trimmed, IMAGE_SHAPE, method=Image.Resampling.LANCZOS),
            trimmed is not gray)


def _trimmed(gray):
    """``gray`` cut to the box of what is lighter than ``BACKGROUND``, if that is less: a small
    drawing in a corner fills the model's 28x28 as a garment fills the dataset's. A picture of
    28x28 is the model's own input (a dataset image saved), taken as it is: trimmed, a quarter
    of the test set's would move a pixel (the dataset centres to half a pixel either way)."""
    if gray.size == IMAGE_SHAPE:
        return gray
    lighter = [0] * (BACKGROUND + 1) + [255] * (255 - BACKGROUND)
    # 256 rows at a time: a whole thresholded copy of an 8000x8000 photo took 64 MB more
    boxes = [(box[0], top + box[1], box[2], top + box[3]) for top in range(0, gray.height, 256)
             if (box := gray.crop((0, top, gray.width, top + 256)).point(lighter).getbbox())]
    if not boxes:
        return gray
    lefts, tops, rights, bottoms = zip(*boxes, strict=True)
    box = (min(lefts), tops[0], max(rights), bottoms[-1])
    return gray if box == (0, 0, *gray.size) else gray.crop(box)


def _eight_bit(pixels: np.ndarray) -> np.ndarray:
    """32-bit pixels as 0..255: floats 0..1 (their usual range) if they keep within it, else
    0..255; integers 0..255, or if any is over 255 0..65535 (16-bit values)."""
    floats = pixels.dtype.kind == "f"
    pixels = np.nan_to_num(pixels.astype(np.float64))
    top = pixels.max(initial=0)
    scale = 255 if floats and top <= 1 else 1 / 257 if not floats and top > 255 else 1
    return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
