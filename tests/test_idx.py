"""The IDX reader training and the client share: shape and values of gzipped and plain files,
and one-line errors naming the file."""

import gzip
import shutil
import struct
from pathlib import Path

import pytest

from common.idx import read_idx


def idx_bytes(shape: tuple[int, ...], values: bytes) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + values


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_reads_shape_and_values_of_gzipped_and_plain_files(tmp_path, suffix):
    content = idx_bytes((2, 3), bytes(range(6)))
    path = tmp_path / f"t10k-images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(content) if suffix else content)
    idx = read_idx(path)
    assert (idx.magic, idx.shape) == (0x0802, (2, 3))
    assert idx.content == content
    assert idx.content[idx.offset :] == bytes(range(6))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\0\0\x08", "not an IDX file of uint8"),
        (b"\0\0\x0d\x01" + struct.pack(">I", 1) + b"\0\0\0\0", "not an IDX file of uint8"),
        (b"\0\0\x08\x02" + struct.pack(">I", 2), "not an IDX file of uint8"),
        (idx_bytes((2, 3), bytes(5)), "expected 6 values for (2, 3), got 5"),
        (idx_bytes((4,), bytes(5)), "expected 4 values for (4,), got 5"),
    ],
)
def test_a_file_that_is_not_uint8_idx_is_one_error_naming_it(tmp_path, content, message):
    path = tmp_path / "labels"
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        read_idx(path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "corrupt"])
def test_a_damaged_gzip_file_is_one_error_naming_it(tmp_path, damage):
    whole = gzip.compress(idx_bytes((2, 3), bytes(range(6))))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes({"truncated": whole[: len(whole) // 2], "not gzip": b"junk",
                      "corrupt": whole[:10] + b"\xff" * (len(whole) - 10)}[damage])
    with pytest.raises(ValueError, match=f"^{path}: not a complete gzip file "):
        read_idx(path)


def test_a_wrong_number_of_dimensions_is_said_as_such_by_the_client(tmp_path):
    """A test-images file whose magic number says 1 dimension (0x0801, a labels file's) was
    read as 10,000 values and refused as "expected 10000 values for (10000,), got 7840008",
    which named neither the header nor what it should say."""
    from common.dataset import TEST_IMAGES, TEST_LABELS, load_test_set

    source = Path("/usr/share/datasets/fashion-mnist")
    images = bytearray(gzip.decompress((source / f"{TEST_IMAGES}.gz").read_bytes()))
    images[3] = 1
    (tmp_path / TEST_IMAGES).write_bytes(images)
    shutil.copy(source / f"{TEST_LABELS}.gz", tmp_path)
    with pytest.raises(ValueError) as caught:
        load_test_set(tmp_path)
    assert str(caught.value) == (f"{tmp_path / TEST_IMAGES}: IDX magic number 2049 (1 "
                                 "dimension), expected 2051 (3 dimensions)")
