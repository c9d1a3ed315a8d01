"""``fmnist-train`` refusing flags it cannot honour: one line on stderr and exit 2,
before any fitting."""

import pytest

from tests.training_runs import run_training


def test_bad_flags_give_one_line_and_a_nonzero_exit(tmp_path):
    result = run_training("--out", str(tmp_path), "--models", "softmax,cnn")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fmnist-train: error: --models: unknown model(s) cnn; choose from "
        "softmax,mlp,baseline (see fmnist-train --help)"
    ]


@pytest.mark.parametrize(("flags", "named"), [
    (["--epochs", "1", "--mlp-epochs", "2"], "--mlp-epochs and --epochs"),
    (["--softmax-learning-rate=0.1", "--learning-rate", "0.01"],
     "--softmax-learning-rate and --learning-rate"),
    (["--no-flip-augment", "--mlp-flip-augment"], "--mlp-flip-augment and --no-flip-augment"),
])
def test_a_models_own_flag_beside_the_shared_one_is_refused(tmp_path, flags, named):
    """`--epochs 1 --mlp-epochs 2` fitted the MLP for 1 epoch: the flag for both models won,
    and the MLP's own flag, given on the same command line, was ignored without a word."""
    result = run_training("--out", str(tmp_path / "repo"), "--models", "mlp", "--train-subset",
                          "1000", "--progress", "none", *flags)
    assert result.returncode == 2, result.stdout[-2000:]
    shared = named.split(" and ")[1]
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: {named} both given: {shared} sets both Keras models'; give one "
        "of them (see fmnist-train --help)"]
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(("flag", "value"), [("--seed", "-1"), ("--split-seed", "4294967296")])
def test_a_seed_numpy_cannot_take_is_refused_before_fitting(tmp_path, flag, value):
    """It was taken, and the run failed after its first model's heading with numpy's
    "ValueError: Seed must be between 0 and 2**32 - 1"."""
    result = run_training("--out", str(tmp_path / "repo"), "--models", "baseline", flag, value)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: {flag}: expected an integer >= 0 and <= 4294967295, "
        f"got {value} (see fmnist-train --help)"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--out", "FILE"], "--out FILE: FILE is a file, not a directory"),
    (["--report-dir", "FILE"], "--report-dir FILE: FILE is a file, not a directory"),
    (["--out", "FILE/repo"], "--out FILE/repo: FILE is a file, not a directory"),
    (["--out", "OLD", "--models", "baseline"], "--out OLD: OLD/baseline is a file, not a "
     "directory"),  # where the model's versions go
], ids=["out-file", "report-dir-file", "out-in-a-file", "model-dir-a-file"])
def test_an_output_directory_that_is_a_file_is_refused_with_the_flags(tmp_path, flags,
                                                                       message):
    """It failed later with a bare FileExistsError or NotADirectoryError, naming no flag."""
    (tmp_path / "file").write_text("")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "baseline").write_text("")

    def placed(text: str) -> str:
        return text.replace("FILE", str(tmp_path / "file")).replace("OLD", str(tmp_path / "old"))

    result = run_training("--out", str(tmp_path / "repo"), *map(placed, flags))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: {placed(message)} (see fmnist-train --help)"]


def test_a_data_dir_that_is_a_file_is_refused_with_the_flag(tmp_path):
    """--data-dir given one of the four files (tab completion) said, after the TensorFlow
    import, "FILE/train-images-idx3-ubyte.gz (or, gunzipped, ...): missing", as if FILE were
    a directory that lacked it."""
    file = tmp_path / "train-images-idx3-ubyte.gz"
    file.write_bytes(b"")
    result = run_training("--out", str(tmp_path / "repo"), "--data-dir", str(file))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: --data-dir {file}: {file} is a file, not a directory "
        "(see fmnist-train --help)"]
    assert not (tmp_path / "repo").exists()
