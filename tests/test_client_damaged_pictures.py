"""`fmnist classify` given a file that is no picture, or a damaged one (a picture or a .npy
array): one line naming the file and what is wrong with it, exit 1, before any call. Pillow's
and numpy's own words named no fault: "cannot identify image file 'x.png'", "Truncated File
Read", "malformed node or string on line 1: <ast.Name object at 0x7fe2b75e7190>"."""

import io

import numpy as np
import pytest
from PIL import Image

from serving.client import cli


def _picture(kind: str) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.mark.parametrize(("content", "said"), [
    (lambda: b"hello\n", "not a picture (in no format Pillow reads), nor a .npy array"),
    (lambda: b"", "an empty file, not a picture"),
    (lambda: _picture("PNG")[:20], "a damaged PNG image, or cut short"),  # its header cut
    (lambda: _picture("PNG")[:400], "a damaged PNG image, or cut short"),  # its pixels cut
    (lambda: _picture("JPEG")[:300], "a damaged JPEG image, or cut short"),
    (lambda: b"P6\nxx", "a damaged PPM image, or cut short"),  # Pillow: "invalid literal ..."
], ids=["text", "empty", "png-header", "png-pixels", "jpeg", "ppm"])
def test_a_file_that_is_no_picture_or_a_damaged_one_is_said_in_one_line(
        tmp_path, capsys, content, said):
    path = tmp_path / "notimg.png"
    path.write_bytes(content())
    assert cli.main(["classify", "--target", "127.0.0.1:1", str(path)]) == 1
    assert capsys.readouterr().err == f"fmnist classify: error: {path}: {said}\n"


def test_a_picture_over_pillows_limit_is_said_in_one_line(tmp_path, capsys, monkeypatch):
    """Pillow said "Image size (N pixels) exceeds limit of M pixels, could be decompression
    bomb DOS attack.": of a person's own file. (Pillow's limit lowered: a real 180-megapixel
    picture takes seconds to write.)"""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (100, 100)).save(tmp_path / "large.png")
    assert cli.main(["classify", "--target", "127.0.0.1:1", str(tmp_path / "large.png")]) == 1
    assert capsys.readouterr().err == (f"fmnist classify: error: {tmp_path / 'large.png'}: over "
                                       "the 2,000 pixels Pillow decodes; scale it down first\n")


@pytest.mark.parametrize(("cut", "said"), [
    (lambda npy: npy[:20], "a damaged .npy file, or cut short (its header)"),
    (lambda npy: npy[:10] + b"{garbage}".ljust(118) + npy[128:],
     "a damaged .npy file, or cut short (its header)"),
    (lambda npy: npy[:200], "a .npy array cut short (fewer values than its header says)"),
    # a header claiming 100 million images (73 GiB) over 784 bytes: numpy said "Unable to
    # allocate 73.0 GiB for an array with shape (78400000000,)", having tried to
    (lambda npy: npy.replace(b"(5, 28, 28), }     ", b"(100000000, 784), }", 1)[:128 + 784],
     "a .npy array cut short (fewer values than its header says)"),
    # numpy's header reader lets a negative dimension by; its reader then said "negative
    # dimensions are not allowed", naming no file
    (lambda npy: npy.replace(b"(5, 28, 28), }     ", b"(-5, 28, 28), }    ", 1),
     "a damaged .npy file, or cut short (its header)"),
    (lambda npy: npy.replace(b"(5, 28, 28), }     ", b"(5, -28, -28), }   ", 1),
     "a damaged .npy file, or cut short (its header)"),
], ids=["header-cut", "header-garbled", "values-cut", "values-claimed", "shape-negative",
        "shape-negatives"])
def test_a_damaged_npy_array_is_said_in_one_line(tmp_path, capsys, cut, said):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((5, 28, 28), np.uint8))
    assert len(buffer.getvalue()) == 128 + 5 * 784  # its header, then the values
    (tmp_path / "cut.npy").write_bytes(cut(buffer.getvalue()))
    assert cli.main(["classify", "--target", "127.0.0.1:1", str(tmp_path / "cut.npy")]) == 1
    assert capsys.readouterr().err == f"fmnist classify: error: {tmp_path / 'cut.npy'}: {said}\n"
