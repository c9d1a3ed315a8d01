"""report.md says what the published models are."""

from pathlib import Path

import numpy as np
import pytest

from common.contract import CLASS_NAMES
from training.report import ModelOutcome, markdown_report


def outcome(name: str, epochs_run: int, best_epoch: int | None) -> ModelOutcome:
    metrics = {"test_accuracy": 0.8, "validation_accuracy": 0.81, "onnx_max_abs_diff": 1e-6,
               "onnx_label_agreement": 1.0,
               "per_class": {c: {"f1": 0.8, "recall": 0.75} for c in CLASS_NAMES}}
    training = {"train_size": 800, "validation_size": 200, "seed": 42, "fit_seconds": 1.0,
                "epochs_run": epochs_run, "best_epoch": best_epoch}
    return ModelOutcome(name, name, np.zeros(10, np.int64), metrics, training)


def row(report: str, name: str) -> list[str]:
    (line,) = [line for line in report.splitlines() if line.startswith(f"| {name} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_epochs_column_names_the_epoch_whose_weights_were_kept(tmp_path):
    """Early stopping ran 5 epochs and restored epoch 3's weights, the ones published and
    whose accuracies the row shows; the row said "5" and nothing of epoch 3."""
    report = markdown_report([outcome("softmax", 5, 3), outcome("mlp", 20, 20),
                              outcome("baseline", 19, None)], [],
                             {"source": "x", "content_sha256": {}}, Path(tmp_path))
    header = row(report, "model")
    epochs = header.index("epochs")
    assert row(report, "softmax")[epochs] == "5 (weights of epoch 3)"
    assert row(report, "mlp")[epochs] == "20"
    assert row(report, "baseline")[epochs] == "19"


def test_the_report_says_when_early_stopping_stopped_a_fit_and_when_all_epochs_ran(tmp_path):
    """A fit whose epochs all ran said nothing of early stopping, one it stopped only "12
    (weights of epoch 7)": neither said whether early stopping was on, nor when it stopped."""
    fits = [outcome("softmax", 25, None), outcome("mlp", 12, 7), outcome("wide", 20, 18),
            outcome("last", 20, 15), outcome("baseline", 19, None)]
    for fit, epochs, patience, stopped in zip(fits[:4], (25, 20, 20, 20), (0, 5, 5, 5),
                                              (False, True, False, True), strict=True):
        fit.training |= {"epochs": epochs, "patience": patience, "stopped_early": stopped}
    report = markdown_report(fits, [], {"source": "x", "content_sha256": {}}, Path(tmp_path))
    assert [line for line in report.splitlines() if "early stopping" in line] == [
        "- softmax: 25 of 25 epochs (early stopping: off, all 25 epochs ran)",
        "- mlp: 12 of 20 epochs (early stopping: stopped after epoch 12, 5 without a better "
        "validation accuracy; the weights are epoch 7's)",
        "- wide: 20 of 20 epochs (early stopping: not triggered, all 20 epochs ran; the weights "
        "are epoch 18's)",
        "- last: 20 of 20 epochs (early stopping: triggered at the last epoch, 5 without a "
        "better validation accuracy; the weights are epoch 15's)",
    ]  # the baseline (no early stopping in it) says nothing


@pytest.mark.parametrize(("patience", "says"), [
    (1, "triggered at the last epoch, 1 without a better validation accuracy"),
    (2, "not triggered, all 2 epochs ran")], ids=["patience-ran-out", "ran-to-the-end"])
def test_a_fit_whose_patience_ran_out_on_its_last_epoch_says_so(patience, says):
    """Patience that ran out on the last epoch read "not triggered, all 2 epochs ran": the
    line told triggered from not by whether epochs were left, not by what Keras did. A
    learning rate of 0: the validation accuracy of epoch 2 is epoch 1's, never better."""
    from training.console import fit_epochs
    from training.models import KerasSettings, fit_keras

    x = np.random.default_rng(0).random((40, 784), np.float32)
    y = np.arange(40) % 10
    settings = KerasSettings(epochs=2, batch_size=20, learning_rate=0.0, patience=patience)
    fitted = fit_keras(settings, x, y, x[:20], y[:20], verbose=0)
    assert fit_epochs(fitted.epochs_run, 2, patience, fitted.best_epoch,
                      fitted.stopped_early) == (
        f"2 of 2 epochs (early stopping: {says}; the weights are epoch 1's)")


@pytest.mark.parametrize(("patience", "best", "says"), [
    (0, None, "1 of 1 epoch (early stopping: off)"),
    (5, 1, "1 of 1 epoch (early stopping: not triggered; the weights are epoch 1's)")])
def test_a_fit_of_one_epoch_says_so_in_the_singular(patience, best, says):
    """`--epochs 1` printed "1 of 1 epochs (early stopping: off, all 1 epochs ran)"."""
    from training.console import fit_epochs

    assert fit_epochs(1, 1, patience, best, False) == says


def test_the_final_table_has_no_trailing_spaces(capsys):
    """Its last column was padded to its widest cell: trailing spaces on every shorter line,
    which a diff of two runs' output shows as changes."""
    from training.cli import print_table

    print_table(("model", "test accuracy", "onnx"), [("mlp", "0.9006", "a/long/path.onnx"),
                                                     ("baseline", "0.8289", "b.onnx")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(line == line.rstrip() for line in lines)
    assert lines[2].startswith("baseline  0.8289")


def test_the_report_names_the_data_files_that_were_read(tmp_path):
    """Given `gunzip`ped files, report.md, metrics.json and every model.json named
    train-images-idx3-ubyte.gz and the like: files that were not there, nor read."""
    import gzip
    import json

    from tests.training_runs import manifest, run_training
    from training import data

    (tmp_path / "data").mkdir()
    for spec in data.FILES:  # the training files gunzipped, the test files as Debian has them
        source = (data.DEBIAN_DIR / spec.filename).read_bytes()
        if spec.filename.startswith("train"):
            (tmp_path / "data" / spec.name).write_bytes(gzip.decompress(source))
        else:
            (tmp_path / "data" / spec.filename).write_bytes(source)
    read = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz"]
    result = run_training("--out", str(tmp_path / "repo"), "--models", "baseline",
                          "--train-subset", "500", "--data-dir", str(tmp_path / "data"),
                          "--report-dir", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    checksums = dict(zip(read, (spec.content_sha256 for spec in data.FILES), strict=True))
    assert manifest(tmp_path / "repo", "baseline", 1)["dataset"]["content_sha256"] == checksums
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["dataset"]["content_sha256"] == checksums
    report = (tmp_path / "report" / "report.md").read_text()
    assert [line.split(":")[0] for line in report.splitlines()
            if line.startswith(("- train", "- t10k"))] == [f"- {name}" for name in read]


def test_a_report_of_a_subset_says_so(tmp_path):
    """`--train-subset 1000` gave a report that read as the full run's: "Training: 800 images,
    validation: 200", nothing of the 60,000 images it did not learn from, as if its accuracies
    were what the defaults reach."""
    subset = [outcome("softmax", 5, None), outcome("baseline", 5, None)]
    for model in subset:
        model.training["train_subset"] = 1000
    report = markdown_report(subset, [], {"source": "x", "content_sha256": {}}, Path(tmp_path))
    lines = report.splitlines()
    assert lines[2] == ("**A subset:** trained with `--train-subset 1000`, the first 1000 of the "
                        "60000 training images (800 training, 200 validation), not the full run.")
    for train_subset in (None, 60000):  # not given; as many as there are: the full run
        for model in subset:
            model.training["train_subset"] = train_subset
        full = markdown_report(subset, [], {"source": "x", "content_sha256": {}}, Path(tmp_path))
        assert "subset" not in full


def test_the_report_gives_each_class_its_accuracy_beside_its_f1(tmp_path):
    """It gave per-class F1 only: how often a Shirt is labelled a shirt (its recall, the
    class's accuracy) was in metrics.json alone, which nobody reads beside the pictures."""
    softmax, mlp = outcome("softmax", 5, None), outcome("mlp", 5, None)
    mlp.metrics["per_class"]["Shirt"] = {"f1": 0.6, "recall": 0.55}
    report = markdown_report([softmax, mlp], [], {"source": "x", "content_sha256": {}},
                             Path(tmp_path))
    assert row(report, "class") == ["class", "softmax accuracy", "softmax F1", "mlp accuracy",
                                    "mlp F1"]
    assert row(report, "Shirt") == ["Shirt", "0.750", "0.800", "0.550", "0.600"]
