"""``fmnist classify -``: the picture or ``.npy`` array on standard input, as ``--csv -`` writes
to standard output."""

import io
import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def classify_stdin(target: str, data: bytes, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.client", "classify", "--target",
                           target, "--top", "1", *flags, "-"],
                          input=data, capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("kind", ["png", "npy"])
def test_classify_reads_a_dash_from_standard_input(target, tmp_path, test_set, kind):
    """`curl .../shoe.png | fmnist classify -` failed "-: No such file or directory" (exit 1),
    though the same tool takes `--csv -` for stdout; the answer is the file's own."""
    path = tmp_path / f"shoe.{kind}"
    if kind == "png":
        Image.fromarray(test_set[0][0]).save(path)
    else:
        np.save(path, test_set[0][:2])
    from_file = subprocess.run([sys.executable, "-m", "serving.client", "classify", "--target",
                                target, "--top", "1", str(path)],
                               capture_output=True, timeout=60, check=True).stdout.decode()
    piped = classify_stdin(target, path.read_bytes())
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == b""
    assert piped.stdout.decode() == from_file.replace(str(path), "-")


def test_standard_input_that_is_no_picture_is_named_so(target):
    piped = classify_stdin(target, b"hello\n")
    assert piped.returncode == 1
    assert piped.stderr.decode() == ("fmnist classify: error: -: not a picture (in no format "
                                     "Pillow reads), nor a .npy array\n")


def test_invert_applies_to_a_picture_on_standard_input(target, test_set):
    buffer = io.BytesIO()
    Image.fromarray(255 - test_set[0][0]).save(buffer, format="PNG")  # dark on light
    piped = classify_stdin(target, buffer.getvalue(), "--invert")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode().splitlines()[0] == "-"  # no "(a light background ...)"


def test_a_dash_may_follow_options_as_files_may(target, tmp_path, test_set):
    """`fmnist classify a.png --top 1 -` said "unrecognized arguments: -" (exit 2), taking the
    dash for an option."""
    path = tmp_path / "a.png"
    Image.fromarray(test_set[0][0]).save(path)
    piped = subprocess.run([sys.executable, "-m", "serving.client", "classify", "--target",
                            target, str(path), "--top", "1", "-"], input=path.read_bytes(),
                           capture_output=True, timeout=60, check=False)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.decode().splitlines()
    assert lines[::3] == [str(path), "-"]
    assert lines[1] == lines[4]


def test_invert_of_an_npy_array_on_standard_input_is_refused_as_of_a_file(target, test_set):
    """`fmnist classify --invert - < three.npy` classified the array as it is without a word,
    where `--invert three.npy` is refused: nothing there to invert."""
    buffer = io.BytesIO()
    np.save(buffer, test_set[0][:3])
    piped = classify_stdin(target, buffer.getvalue(), "--invert")
    assert (piped.returncode, piped.stdout) == (2, b"")
    assert piped.stderr.decode() == (
        "fmnist classify: error: --invert: no picture file to invert (.npy arrays and "
        "--test-index images are taken as they are) (see fmnist classify --help)\n")


def test_empty_standard_input_is_named_so(target):
    """`curl -sf URL | fmnist classify -` whose curl failed piped nothing, and the line said
    "cannot identify image file", as if a file had come that was no picture."""
    piped = classify_stdin(target, b"")
    assert (piped.returncode, piped.stdout) == (1, b"")
    assert piped.stderr.decode() == ("fmnist classify: error: -: standard input is empty: no "
                                     "picture nor .npy array came\n")


def test_a_terminal_on_standard_input_is_refused_at_once():
    """`fmnist classify -` typed at a prompt waited, silent, for a picture nobody would type:
    it looked hung. A pseudo-terminal stands for the prompt; no server is needed, as the
    files are read before any call."""
    controller, terminal = pty.openpty()
    try:
        typed = subprocess.run([sys.executable, "-m", "serving.client", "classify", "-"],
                               stdin=terminal, capture_output=True, timeout=60, check=False)
    finally:
        os.close(controller)
        os.close(terminal)
    assert (typed.returncode, typed.stdout) == (1, b"")
    assert typed.stderr.decode() == ("fmnist classify: error: -: standard input is a terminal; "
                                     "pipe a picture in: fmnist classify - < shoe.png\n")
