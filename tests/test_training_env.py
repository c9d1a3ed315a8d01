"""fmnist-train's FMNIST_* variables: a near miss of one is said, not ignored."""

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

