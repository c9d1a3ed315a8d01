"""fmnist-train's FMNIST_* variables: a near miss of one is said, not ignored."""

import pytest

from tests.training_runs import manifest, run_training


def test_a_misspelt_variable_is_said_and_the_run_goes_on(tmp_path):
    """FMNIST_BASELINE_MAX_ITERS=1 (for FMNIST_BASELINE_MAX_ITER) was ignored without a word:
    the run fitted for as long as the default says, and nothing said why (fmnist-serve warns
    of its own misspelt variables). A variable of another tool is not named."""
    result = run_training("--out", str(tmp_path), "--models", "baseline", "--train-subset",
                          "1000", "--progress", "none",
                          env={"FMNIST_BASELINE_MAX_ITERS": "1", "FMNIST_PORT": "6000",
                               "FMNIST_BASELINE_MODEL": "baseline"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "fmnist-train: warning: FMNIST_BASELINE_MAX_ITERS: not a setting of fmnist-train (did "
        "you mean FMNIST_BASELINE_MAX_ITER?); ignored"]
    assert manifest(tmp_path, "baseline", 1)["training"]["max_iter"] == 20



def test_a_bad_shared_variable_that_its_flag_replaces_is_not_refused(monkeypatch, capsys):
    """FMNIST_EPOCHS is both Keras models' default: set bad, `fmnist-train --epochs 2` was
    refused ('FMNIST_EPOCHS: expected a positive integer, got abc'), the value its flag was
    given to replace, while every other variable gives way to its flag. Without the flag it
    is refused, as before."""
    from training.options import build_parser, keras_settings

    monkeypatch.setenv("FMNIST_EPOCHS", "abc")
    args = build_parser().parse_args(["--out", "x", "--epochs", "2"])
    assert keras_settings(args, "softmax").epochs == keras_settings(args, "mlp").epochs == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "x"])
    assert capsys.readouterr().err == ("fmnist-train: error: FMNIST_EPOCHS: expected a positive "
                                       "integer, got abc (see fmnist-train --help)\n")



@pytest.mark.parametrize(("variable", "argv", "kept"), [
    ("FMNIST_MLP_EPOCHS", ["--epochs", "2"], ("epochs", 2)),
    ("FMNIST_SOFTMAX_FLIP_AUGMENT", ["--no-flip-augment"], ("flip_augment", False))])
def test_a_bad_model_variable_that_the_flag_for_both_replaces_is_not_refused(
        monkeypatch, capsys, variable, argv, kept):
    """FMNIST_MLP_EPOCHS=abc beside `fmnist-train --epochs 2` was refused ('FMNIST_MLP_EPOCHS:
    expected a positive integer, got abc'), though --epochs sets both models' and replaces
    it, as it replaces a good one (its own flag --mlp-epochs did already). Without a flag it
    is refused, as before."""
    from training.options import build_parser, keras_settings

    monkeypatch.setenv(variable, "abc")
    args = build_parser().parse_args(["--out", "x", *argv])
    model = variable.split("_")[1].lower()
    assert getattr(keras_settings(args, model), kept[0]) == kept[1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "x"])
    assert capsys.readouterr().err.startswith(f"fmnist-train: error: {variable}: expected ")
