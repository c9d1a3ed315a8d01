"""The Fashion-MNIST files: found, verified, identical to Zalando's, and split as promised."""

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import held_port
from training import data

# Zalando's published MD5s of its .gz files, and the gzip header time stamps they carried.
# Debian's strip-nondeterminism replaced the header (no file name, a 2020 time stamp) but kept the
# deflate stream, so putting the original header back must reproduce Zalando's files exactly.
ZALANDO_MD5 = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 1504176606),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", 1504176606),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", 1504176627),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", 1504176627),
}


@pytest.fixture(scope="module")
def dataset() -> data.Dataset:
    return data.load(data.DEBIAN_DIR)


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A private copy of the four files, found through FMNIST_DATA_DIR."""
    for spec in data.FILES:
        shutil.copy(data.DEBIAN_DIR / spec.filename, tmp_path / spec.filename)
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path))
    return tmp_path


def test_debian_files_rebuilt_with_zalandos_gzip_header_have_zalandos_md5s():
    for filename, (md5, mtime) in ZALANDO_MD5.items():
        debian = (data.DEBIAN_DIR / filename).read_bytes()
        assert debian[:4] == b"\x1f\x8b\x08\x00"  # deflate, no file name stored
        name = filename.removesuffix(".gz").encode() + b"\0"
        header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + name
        assert hashlib.md5(header + debian[10:]).hexdigest() == md5, filename


def test_loads_the_full_dataset_with_balanced_classes(dataset):
    assert dataset.x_train.shape == (60000, 28, 28)
    assert dataset.x_test.shape == (10000, 28, 28)
    assert dataset.x_train.dtype == dataset.y_train.dtype == np.uint8
    assert np.bincount(dataset.y_train).tolist() == [6000] * 10
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
    assert dataset.x_train.max() == 255
    assert set(dataset.checksums()["content_sha256"]) == {spec.filename for spec in data.FILES}


def test_fmnist_data_dir_comes_first(data_copy):
    assert data.find_data_dir() == data_copy
    assert data.load().source == data_copy


@pytest.mark.parametrize("damage", ["missing", "truncated", "not gzip", "other content"])
def test_a_bad_file_gives_one_error_naming_it_and_the_fix(data_copy, damage):
    path = data_copy / data.TEST_LABELS.filename
    original = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(original[: len(original) // 2])
    elif damage == "not gzip":
        path.write_bytes(b"<html>404 Not Found</html>")
    else:  # a valid IDX file with one label changed
        content = bytearray(gzip.decompress(original))
        content[-1] = (content[-1] + 1) % 10
        path.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(data.DatasetError) as caught:
        data.load()
    message = str(caught.value)
    assert str(path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    if damage == "other content":
        assert data.TEST_LABELS.content_sha256[:16] in message
    if damage == "missing":  # either is read (it named only the gzipped one)
        assert message.startswith(f"{path} (or, gunzipped, {path.stem}): missing")


def test_a_wrong_idx_header_is_reported(data_copy):
    path = data_copy / data.TRAIN_LABELS.filename
    path.write_bytes(
        gzip.compress(gzip.decompress((data_copy / data.TEST_LABELS.filename).read_bytes()))
    )
    with pytest.raises(
        data.DatasetError,
        match=r"IDX header .*\(2049, 10000\), expected \(2049, "
        r"60000\)",
    ):
        data.load()


def test_a_wrong_magic_number_is_reported_as_such(data_copy):
    """A magic number of 1 dimension on the images: "expected 60000 values for (60000,), got
    47040008", though README promises the header checked against what was expected."""
    path = data_copy / data.TRAIN_IMAGES.filename
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[3] = 1
    path.write_bytes(gzip.compress(bytes(content), compresslevel=1))
    with pytest.raises(data.DatasetError) as caught:
        data.load()
    assert str(caught.value).startswith(
        f"{path}: IDX magic number 2049 (1 dimension), expected 2051 (3 dimensions); install ")


def test_cli_reports_missing_data_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--out",
            str(tmp_path / "repo"),
            "--models",
            "baseline",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fmnist-train: error: ")
    assert "train-images-idx3-ubyte.gz" in lines[0]
    assert "apt-get install dataset-fashion-mnist" in lines[0]
    assert not (tmp_path / "repo").exists()


def test_validation_split_is_stratified_disjoint_and_seeded(dataset):
    x_train, x_val, _, y_val = data.split_train_validation(dataset.x_train, dataset.y_train)
    assert (len(x_train), len(x_val)) == (48000, 12000)
    assert np.bincount(y_val).tolist() == [1200] * 10
    again = data.split_train_validation(dataset.x_train, dataset.y_train)
    assert np.array_equal(again[1], x_val)
    train_index, val_index, _, _ = data.split_train_validation(
        np.arange(len(dataset.y_train)), dataset.y_train
    )
    assert not set(train_index) & set(val_index)
    assert np.array_equal(dataset.x_train[val_index], x_val)


def test_tiny_subsets_still_split(dataset):
    x_train, x_val, _, _ = data.split_train_validation(dataset.x_train[:30], dataset.y_train[:30])
    assert len(x_train) + len(x_val) == 30
    assert len(x_val) == 6


def test_a_subset_missing_a_class_is_refused_in_one_line_before_anything_is_written(tmp_path):
    """The baseline fitted on 9 classes had a [N,9] output that model.json called [N,10]: a
    version no server could load, from a run that said it succeeded."""
    result = subprocess.run(
        [sys.executable, "-m", "training", "--out", str(tmp_path / "repo"), "--models",
         "baseline", "--train-subset", "30", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fmnist-train: error: --train-subset 30: its training part holds 9 of the 10 classes "
        "(missing: Bag); every class must be learned: take a larger subset"]
    assert not (tmp_path / "repo").exists()  # not even the directory it made


def test_a_report_dir_that_cannot_be_made_fails_before_any_version_is_published(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "training", "--out", str(tmp_path / "repo"), "--models",
         "baseline", "--train-subset", "2000", "--report-dir", str(tmp_path / "a_file" / "sub")],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2  # refused with the flags, before anything is made
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: --report-dir {tmp_path / 'a_file' / 'sub'}: {tmp_path / 'a_file'} "
        "is a file, not a directory (see fmnist-train --help)"]
    assert not (tmp_path / "repo").exists()


def test_a_data_dir_starting_with_a_tilde_is_under_home(tmp_path, monkeypatch):
    """`--data-dir=~/fashion` (bash leaves a ~ after = alone) and FMNIST_DATA_DIR=~/fashion from
    an env file were taken literally: "~/fashion/train-images-idx3-ubyte.gz: missing", beside
    the very files; the client's test set likewise."""
    from common.dataset import load_test_set

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "fashion").symlink_to(data.DEBIAN_DIR)
    assert len(data.load(data.Path("~/fashion")).y_train) == 60000
    monkeypatch.setenv("FMNIST_DATA_DIR", "~/fashion")
    assert len(load_test_set()[1]) == 10000


def test_a_directory_of_uncompressed_files_is_read_as_the_client_reads_it(tmp_path):
    """`gunzip *.gz` in a data directory: fmnist score --data-dir read it, fmnist-train
    --data-dir said "train-images-idx3-ubyte.gz: missing; ... point --data-dir at a directory
    holding Fashion-MNIST's IDX files", the very directory it was given."""
    from common.dataset import load_test_set

    for spec in data.FILES:
        raw = gzip.decompress((data.DEBIAN_DIR / spec.filename).read_bytes())
        (tmp_path / spec.filename.removesuffix(".gz")).write_bytes(raw)
    loaded = data.load(tmp_path)
    assert np.array_equal(loaded.y_test, load_test_set(tmp_path)[1])
    assert len(loaded.x_train) == 60000
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"")  # found, and checked as ever
    with pytest.raises(data.DatasetError, match="train-labels-idx1-ubyte"):
        data.load(tmp_path)


def test_a_failed_download_is_one_line_saying_why(tmp_path):
    """With no copy on the machine (no Debian package, nothing in the Keras cache), `--models
    baseline` printed TensorFlow's C++ start-up lines (oneDNN, CUDA drivers) before its error,
    which said only "the Keras download failed (Exception)": offline, refused, behind a proxy?
    Keras' own words say; here, from a port where nothing listens."""
    origin = f"http://127.0.0.1:{held_port()}/"
    program = ("import sys; from pathlib import Path; from training import cli, data; "
               f"data.DEBIAN_DIR = Path({str(tmp_path / 'no-debian')!r}); "
               f"data.KERAS_ORIGIN = {origin!r}; "
               f"sys.exit(cli.main(['--out', {str(tmp_path / 'repo')!r}, '--models', 'baseline']))")
    env = {k: v for k, v in os.environ.items()  # no proxy between it and the port
           if not k.startswith(("FMNIST_", "TF_", "KERAS_")) and not k.lower().endswith("_proxy")
           } | {"HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=300, check=False, env=env)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fmnist-train: error: Fashion-MNIST not found (searched "), line
    assert f"the Keras download failed (URL fetch failure on {origin}" in line
    assert "Connection refused" in line
    assert line.endswith(f"; {data.HOW_TO_GET}")
    assert not (tmp_path / "repo").exists()
