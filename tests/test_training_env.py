"""fmnist-train's FMNIST_* variables: a near miss of one is said, not ignored."""

from common import flags
from tests.training_runs import manifest, run_training
from training.options import build_parser


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


def test_no_variable_of_the_server_or_client_is_a_near_miss(monkeypatch):
    """fmnist-serve's and fmnist's variables (FMNIST_PORT, FMNIST_BASELINE_MODEL...) share a
    shell or a container with fmnist-train's: none may read as a misspelling of one."""
    from serving.client.cli import _parser
    from serving.settings import argument_parser
    from training.console import near_misses

    monkeypatch.setattr(flags, "READ", set())
    build_parser()
    training = set(flags.READ)
    flags.READ.clear()
    argument_parser(environ={})
    _parser()
    others = flags.READ - training
    assert len(others) > 30
    assert near_misses(dict.fromkeys(others, "1"), training) == []
    assert near_misses({"FMNIST_EPOCH": "3"}, training) == [("FMNIST_EPOCH", "FMNIST_EPOCHS")]
