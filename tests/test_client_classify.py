"""``fmnist classify``'s output against a real server (more in test_client_cli.py)."""

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
