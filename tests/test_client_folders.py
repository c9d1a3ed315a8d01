"""``fmnist classify DIR``: the folder's image files (and ``.npy`` arrays) in name order, as
if each had been named; it said "DIR: Is a directory"."""

import numpy as np
import pytest
from PIL import Image

from serving.client import cli


def classified(target: str, capsys, *inputs) -> list[str]:
    assert cli.main(["classify", "--target", target, "--top", "1", *map(str, inputs)]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_folder_is_its_image_files_in_name_order(target, tmp_path, capsys, test_set):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(test_set[0][0]).save(folder / "b.png")
    Image.fromarray(test_set[0][1]).save(folder / "A.JPG")
    np.save(folder / "c.npy", test_set[0][2:4])
    Image.fromarray(test_set[0][4]).save(folder / "sub" / "a.png")  # not looked into
    Image.fromarray(test_set[0][5]).save(folder / ".hidden.png")  # as a shell's DIR/* leaves it
    (folder / "notes.txt").write_text("not a picture")
    (folder / "z.gif").mkdir()  # a folder, whatever its name
    files = [folder / "A.JPG", folder / "b.png", folder / "c.npy"]
    assert classified(target, capsys, folder) == classified(target, capsys, *files)
    lines = classified(target, capsys, "--test-index", "0", folder, files[1])
    assert lines[::3] == [f"{folder}/A.JPG", f"{folder}/b.png", f"{folder}/c.npy[0]",
                          f"{folder}/c.npy[1]", f"{folder}/b.png", "test[0]  (true: Ankle boot)"]


@pytest.mark.parametrize("holding", [[], ["notes.txt", ".hidden.png"]])
def test_a_folder_without_image_files_is_said_in_one_line(target, tmp_path, capsys, holding):
    """As an .npy array of no images is: bad input, exit 1."""
    for name in holding:
        (tmp_path / name).write_text("x")
    assert cli.main(["classify", "--target", target, str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"fmnist classify: error: {tmp_path}: no image files in it\n"


def test_invert_of_a_folder_of_arrays_is_refused(target, tmp_path, capsys):
    np.save(tmp_path / "three.npy", np.zeros((3, 28, 28), np.uint8))
    assert cli.main(["classify", "--target", target, "--invert", str(tmp_path)]) == 2
    assert "--invert: no picture file to invert" in capsys.readouterr().err
