"""``fmnist classify``'s output against a real server (more in test_client_cli.py)."""

import pytest

from serving.client import cli


def test_classifying_with_the_baseline_itself_prints_its_answer_once(target, capsys):
    """--model baseline printed the baseline's line twice, its top classes and then the same
    version again as "the baseline's answer" (``fmnist score`` prints it once)."""
    assert cli.main(["classify", "--target", target, "--test-index", "0", "5", "--model",
                     "baseline"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[::2] == ["test[0]  (true: Ankle boot)", "test[5]  (true: Trouser)"]
    assert [line[:15] for line in lines[1::2]] == ["  baseline v1  "] * 2
    assert lines[1].count("%") == 3  # its top classes


def test_another_model_is_shown_beside_the_baseline(target, capsys):
    assert cli.main(["classify", "--target", target, "--test-index", "0", "--model",
                     "softmax"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:15] for line in lines[1:]] == ["  softmax v1   ", "  baseline v1  "]


def test_image_files_may_follow_options(target, tmp_path, capsys, test_set):
    """`fmnist classify a.png --top 1 b.png` exited 2 with 'fmnist: error: unrecognized
    arguments: b.png', and `--test-index 0 a.png` with "invalid int value: 'a.png'"."""
    from PIL import Image

    for name, index in (("a.png", 0), ("b.png", 5), ("c.png", 1)):
        Image.fromarray(test_set[0][index]).save(tmp_path / name)
    a, b, c = (str(tmp_path / name) for name in ("a.png", "b.png", "c.png"))
    assert cli.main(["classify", "--target", target, a, "--top", "1", b, "--test-index", "3",
                     "4", c, "--invert"]) == 0
    assert capsys.readouterr().out.splitlines()[::3] == [
        a, b, c, "test[3]  (true: Trouser)", "test[4]  (true: Shirt)"]


def test_a_test_index_that_is_not_a_number_is_still_refused_as_one(capsys):
    with pytest.raises(SystemExit) as refused:
        cli.main(["classify", "--test-index", "x1"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fmnist classify: error: argument --test-index: invalid int value: 'x1'")
