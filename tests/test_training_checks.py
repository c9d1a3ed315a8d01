"""What stops a run before it publishes: a served graph that is not the fitted model, and a
train/validation split that leaves too few training images."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from training.cli import TrainingError, check_worth_publishing

# The baseline's exported graph with its /255 scale set to 1: raw pixels reach the weights,
# so the graph answers another model than the one fitted (as a converter's bug would).
BROKEN_EXPORT = """
import sys
from onnx import numpy_helper
from training import cli, export
real = export.baseline_to_onnx
def broken(classifier):
    model = real(classifier)
    for tensor in model.graph.initializer:
        if tensor.name.endswith("scale_255"):
            one = numpy_helper.to_array(tensor) * 0 + 1
            tensor.CopyFrom(numpy_helper.from_array(one, tensor.name))
    return model
export.baseline_to_onnx = broken
sys.exit(cli.main(sys.argv[1:]))
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_a_graph_that_answers_otherwise_than_the_fitted_model_publishes_nothing(tmp_path):
    """It was published with exit 0 ("its labels are the fitted model's for 40% of the test
    images"), and --min-validation-accuracy, judged on the fitted model, let it through."""
    out = tmp_path / "repo"
    result = run("-c", BROKEN_EXPORT, "--out", str(out), "--models", "baseline",
                 "--train-subset", "2000", "--progress", "none",
                 "--min-validation-accuracy", "0.7")
    assert result.returncode == 1, result.stdout[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fmnist-train: error: baseline: the exported ONNX graph does not "
                           "answer as the fitted model: the same label for "), line
    assert line.endswith("nothing was published"), line
    assert not out.exists()


def test_an_export_is_judged_on_its_labels_and_probabilities():
    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(10), size=1000).astype(np.float32)
    y_val = np.repeat(np.arange(10), 10)
    with pytest.raises(TrainingError, match=r"^mlp: the exported ONNX graph does not answer as "
                       r"the fitted model: the same label for 0\.00% of the test images"):
        check_worth_publishing("mlp", reference, np.roll(reference, 1, axis=1), 0.9, y_val)
    # the labels agree, the probabilities do not: the message must not say the labels failed
    with pytest.raises(TrainingError, match=r"the same label for 100\.00% of the test images "
                       r"\(at least 99\.9% expected\), probabilities up to 5\.0e-02 apart"):
        check_worth_publishing("mlp", reference, reference + 0.05, 0.9, y_val)
    # float32 arithmetic of a baseline with large weights (alpha 1e-7): 2e-4, same labels
    check_worth_publishing("baseline", reference, reference + 2e-4, 0.9, y_val)


@pytest.mark.parametrize(("flags", "message"), [
    (["--train-subset", "100", "--validation-split", "0.95"],
     "--train-subset 100 with --validation-split 0.95 leaves 5 training images beside the 95 "
     "held out for validation"),
    (["--train-subset", "1"],
     "--train-subset 1 with --validation-split 0.2 leaves 0 training images beside the 1 "
     "held out for validation"),
    (["--validation-split", "0.9999"],
     "--validation-split 0.9999 leaves 6 training images beside the 59994 held out for "
     "validation"),
], ids=["subset-and-split", "tiny-subset", "split"])
def test_a_split_that_leaves_too_few_training_images_is_one_line_naming_the_flags(tmp_path,
                                                                                   flags,
                                                                                   message):
    """scikit-learn's own words came out instead: "ValueError: The train_size = 5 should be
    greater or equal to the number of classes = 10", "With n_samples=1, test_size=0.2 and
    train_size=None, the resulting train set will be empty"."""
    result = run("-m", "training", "--out", str(tmp_path / "repo"), "--models", "baseline",
                 *flags)
    assert result.returncode == 1
    fix = "take a larger subset or" if "--train-subset" in flags else "give"
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: {message}, fewer than the 10 classes; every class must be "
        f"learned: {fix} a smaller --validation-split"]
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--train-subset", "1000", "--validation-split", "0.001"],
     "--train-subset 1000 with --validation-split 0.001 holds out 1 validation image"),
    (["--validation-split", "0.0001"], "--validation-split 0.0001 holds out 6 validation images"),
], ids=["subset-and-split", "split"])
def test_a_split_that_holds_out_fewer_validation_images_than_classes_is_refused(tmp_path, flags,
                                                                                message):
    """One validation image made every model "no better than always answering one class",
    even at validation accuracy 1.0000: the error contradicted itself after the fit."""
    result = run("-m", "training", "--out", str(tmp_path / "repo"), "--models", "baseline",
                 *flags)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: {message}, fewer than the 10 classes: its accuracy (early "
        "stopping, --min-validation-accuracy) would judge nothing; "
        f"{'take a larger subset or ' * ('--train-subset' in flags)}give a larger "
        "--validation-split"]
    assert "== baseline" not in result.stdout  # refused before fitting
    assert not (tmp_path / "repo").exists()


# main(argv) in a process whose own command line (sys.argv) is another: a program's or a job's
IN_PROCESS = "import sys; from training import cli; sys.exit(cli.main(sys.argv[1].split()))"


@pytest.mark.parametrize(("argv", "own_argv", "named"), [
    ("--min-validation-accuracy 0.95", "", "--min-validation-accuracy 0.95"),
    ("", "--min-validation-accuracy", "FMNIST_MIN_VALIDATION_ACCURACY=0.95"),
])
def test_the_floor_is_named_as_the_argv_of_main_gave_it(tmp_path, argv, own_argv, named):
    """main(argv) named the floor from sys.argv: a flag in ``argv`` beside the variable was
    "FMNIST_MIN_VALIDATION_ACCURACY=0.95", a value the variable did not hold, and a flag on
    the process's own command line hid the variable that set the floor."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    result = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, f"--out {tmp_path / 'repo'} --models baseline "
         f"--train-subset 1000 --progress none {argv}", *own_argv.split()],
        capture_output=True, text=True, timeout=300, check=False,
        env=environ | {"FMNIST_MIN_VALIDATION_ACCURACY": "0.96" if argv else "0.95"})
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(r"fmnist-train: error: baseline: validation accuracy 0\.\d{4} is below "
                        f"{re.escape(named)}; nothing was published", line), line
