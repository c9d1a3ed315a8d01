"""``fmnist-train`` end to end on a small subset: repository, report, table, seeding, env vars."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from common.contract import MODEL_FILE
from tests.training_runs import MODELS, manifest, run_training
from training import data, export
from training.repository import sha256_file

PICTURES = {"confusion-matrices.png", "learning-curves.png"} | {
    f"samples-{name}.png" for name in MODELS
}
SMALL_RUN = {"train_subset": "1000", "epochs": "2", "mlp_hidden": "64", "batch_size": "64"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same small run twice into one repository: by flags, then by FMNIST_* variables."""
    out = tmp_path_factory.mktemp("repo")
    report_dir = tmp_path_factory.mktemp("report")
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in SMALL_RUN.items()]
    by_flags = run_training("--out", str(out), "--progress", "epoch", *flags)
    variables = {f"FMNIST_{key.upper()}": value for key, value in SMALL_RUN.items()}
    variables |= {"FMNIST_OUT": str(out), "FMNIST_REPORT_DIR": str(report_dir)}
    by_env = run_training(env=variables)
    return out, report_dir, by_flags, by_env


def test_both_runs_succeed_and_print_the_table(runs):
    out, report_dir, by_flags, by_env = runs
    assert by_flags.returncode == 0, by_flags.stderr[-2000:]
    assert by_env.returncode == 0, by_env.stderr[-2000:]
    assert "Epoch 2/2" in by_flags.stdout  # Keras' progress output
    table = by_flags.stdout.split("model ")[-1]
    for name in MODELS:
        assert str(out / name / "1" / MODEL_FILE) in table
    assert f"report: {report_dir / 'report.md'}" in by_env.stdout
    assert "oneDNN" not in by_flags.stderr + by_flags.stdout  # TensorFlow's start-up chatter
    # between fitting and the table it said nothing for seconds: what it is doing, and each
    # model's result as soon as it has one
    assert by_flags.stdout.count("exported to ONNX: test accuracy ") == len(MODELS)
    assert ("\n== baseline\nfitting SGDClassifier on 800 images: ten one-vs-rest problems of up "
            "to 20 epochs, 2 at a time\nfitted in ") in by_flags.stdout  # said before its fit
    assert f"writing the report into {report_dir}" in by_env.stdout


def test_each_run_adds_a_version_with_a_complete_manifest(runs):
    out, *_ = runs
    for name in MODELS:
        assert sorted(p.name for p in (out / name).iterdir()) == [".highest-version", "1", "2"]
        document = manifest(out, name, 1)
        assert document["name"] == name
        assert document["sha256"] == sha256_file(out / name / "1" / MODEL_FILE)
        assert 0.3 < document["metrics"]["test_accuracy"] <= 1
        assert set(document["metrics"]["per_class_f1"]) == set(document["classes"])
        assert document["training"]["train_size"] == 800
        assert document["training"]["validation_size"] == 200
        assert document["training"]["train_subset"] == 1000
        assert document["training"]["seed"] == 42
        assert document["training"]["epochs_run"] >= 1
        checksums = document["dataset"]["content_sha256"]
        assert checksums[data.TRAIN_IMAGES.filename] == data.TRAIN_IMAGES.content_sha256
        assert "onnx" in document["framework"]
        assert document["description"]
    assert manifest(out, "mlp", 1)["training"]["hidden"] == [64]
    assert 0 < manifest(out, "mlp", 1)["metrics"]["agreement_with_baseline"] <= 1


def test_same_seed_same_models(runs):
    """Run 2 (env vars) repeats run 1 (flags): identical accuracies, outputs and files."""
    out, *_ = runs
    dataset = data.load(data.DEBIAN_DIR)
    images = dataset.x_test[:2000]
    for name in MODELS:
        first, second = manifest(out, name, 1), manifest(out, name, 2)
        assert first["metrics"]["test_accuracy"] == second["metrics"]["test_accuracy"]
        assert first["training"] | {"fit_seconds": 0} == second["training"] | {"fit_seconds": 0}
        outputs = [
            export.run_onnx(onnx.load(out / name / str(v) / MODEL_FILE), images)[0] for v in (1, 2)
        ]
        assert np.array_equal(*outputs), name
        assert first["sha256"] == second["sha256"], name  # the same file, the baseline's too


def test_a_model_is_the_same_file_whichever_models_share_its_run(runs, tmp_path):
    """The MLP fitted alone (--models mlp) answered as the one fitted after the softmax model,
    bit for bit, but model.json gave another sha256: Keras had named its layers dense_1,
    dense_2... after the softmax model's, so a same-model check by sha256 said "changed"."""
    out, *_ = runs
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in SMALL_RUN.items()]
    result = run_training("--out", str(tmp_path), "--models", "mlp", "--progress", "none", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    assert manifest(tmp_path, "mlp", 1)["sha256"] == manifest(out, "mlp", 1)["sha256"]


def test_default_report_directory_and_custom_one_hold_the_report(runs):
    out, report_dir, *_ = runs
    (default_dir,) = (out / "reports").iterdir()
    for directory in (default_dir, report_dir):
        files = {p.name for p in directory.iterdir()}
        assert {"report.md", "metrics.json"} | PICTURES <= files
        metrics = json.loads((directory / "metrics.json").read_text())["models"]
        assert set(metrics) == set(MODELS)
        matrix = np.array(metrics["mlp"]["metrics"]["confusion_matrix"])
        assert matrix.shape == (10, 10)
        assert matrix.sum() == 10000
        report = (directory / "report.md").read_text()
        assert all(f"]({picture})" in report for picture in PICTURES)
        for entry in metrics.values():  # named from the report: they hold when moved or copied
            onnx = Path(entry["onnx"])
            assert not onnx.is_absolute() and (directory / onnx).is_file(), onnx
            assert f"](<{onnx}>)" in report
        assert "agreement" in report.lower()


@pytest.mark.parametrize(("limit", "epochs"), [("2", "2 epochs"), ("1", "1 epoch")])
def test_a_baseline_stopped_by_its_iteration_limit_says_so(tmp_path, limit, epochs):
    """"fitted in 0.5 s, 20 epochs" read as a finished fit: scikit-learn's ConvergenceWarning
    is silenced (a quick baseline is the point), and nothing said the limit had stopped it.
    One read "1 epochs"."""
    result = run_training("--out", str(tmp_path), "--models", "baseline", "--train-subset",
                          "1000", "--baseline-max-iter", limit, "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert (f" s, {epochs} (--baseline-max-iter's limit, before --baseline-tol said it "
            "converged)\n" in result.stdout)


def test_a_keras_fit_says_its_epochs_and_the_ones_early_stopping_kept(tmp_path):
    """The last epoch line said val_accuracy 0.7350, the model published was epoch 5's
    (0.7750), and nothing on the terminal said so, nor why 8 epochs stopped at 6 (with
    --progress none nothing said how long or how many epochs a Keras fit took)."""
    result = run_training("--out", str(tmp_path), "--models", "softmax", "--train-subset",
                          "2000", "--epochs", "8", "--softmax-patience", "1",
                          "--softmax-lr-schedule", "none", "--softmax-learning-rate", "0.05",
                          "--progress", "none")
    assert result.returncode == 0, result.stderr
    training = manifest(tmp_path, "softmax", 1)["training"]
    run, best = training["epochs_run"], training["best_epoch"]
    assert best < run < 8  # stopped early, on an earlier epoch's weights
    assert (f" s, {run} of 8 epochs (early stopping: stopped after epoch {run}, {run - best} "
            f"without a better validation accuracy; the weights are epoch {best}'s)\n"
            ) in result.stdout
    assert "\nfitted in " in result.stdout


def test_a_run_whose_output_is_closed_still_publishes(tmp_path):
    """`fmnist-train ... | head -1`: the second line met a closed pipe, and the run failed with
    "BrokenPipeError: [Errno 32] Broken pipe", undoing everything it had done."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    with subprocess.Popen([sys.executable, "-m", "training", "--out", str(tmp_path), "--models",
                           "baseline", "--train-subset", "500"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as run:
        assert run.stdout.readline().startswith("data: ")
        run.stdout.close()  # as head does, having read its line
        assert run.wait(timeout=300) == 0, run.stderr.read()
        assert run.stderr.read() == ""
    assert manifest(tmp_path, "baseline", 1)["name"] == "baseline"


def test_a_run_started_without_a_standard_output_publishes(tmp_path):
    """`fmnist-train ... >&-` (a service manager's closed stdout): Python has no sys.stdout,
    and the run failed (exit 120, "AttributeError: 'NoneType' object has no attribute
    'flush'"); the --progress default's isatty() and Keras' progress lines failed likewise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    result = subprocess.run(["sh", "-c", 'exec "$0" "$@" >&-', sys.executable, "-m", "training",
                             "--out", str(tmp_path), "--models", "baseline", "--train-subset",
                             "500"], stderr=subprocess.PIPE, text=True, env=env, timeout=300,
                            check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert manifest(tmp_path, "baseline", 1)["name"] == "baseline"


def test_a_run_started_without_a_standard_error_publishes(tmp_path):
    """`fmnist-train ... 2>&-`: Python has no sys.stderr, and a run of a Keras model failed
    before any fit with "AttributeError: 'NoneType' object has no attribute 'flush'" (the
    quiet TensorFlow import flushed it), said on standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    result = subprocess.run(["sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, "-m", "training",
                             "--out", str(tmp_path), "--models", "softmax", "--train-subset",
                             "500", "--epochs", "1", "--progress", "none"],
                            stdout=subprocess.PIPE, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"{tmp_path / 'softmax' / '1' / MODEL_FILE}" in result.stdout
    assert manifest(tmp_path, "softmax", 1)["name"] == "softmax"


def test_a_train_subset_over_the_training_set_records_the_images_used(tmp_path):
    """model.json said 1,000,000 for a run that used the 60,000 there are."""
    result = run_training("--out", str(tmp_path), "--models", "baseline", "--train-subset",
                          "1000000", "--baseline-max-iter", "1")
    assert result.returncode == 0, result.stderr
    training = manifest(tmp_path, "baseline", 1)["training"]
    assert training["train_subset"] == 60000
    assert training["train_size"] + training["validation_size"] == 60000


def test_the_data_directory_is_recorded_whatever_the_working_directory(tmp_path):
    """--data-dir data was recorded as "source": "data" in model.json and the report: a
    directory of whichever working directory the trainer had, which no reader knows."""
    directory = tmp_path / "data"
    directory.mkdir()
    for spec in data.FILES:
        (directory / spec.filename).symlink_to(data.DEBIAN_DIR / spec.filename)
    result = run_training("--out", str(tmp_path / "repo"), "--models", "baseline",
                          "--train-subset", "1000", "--data-dir", os.path.relpath(directory))
    assert result.returncode == 0, result.stderr
    assert manifest(tmp_path / "repo", "baseline", 1)["dataset"]["source"] == str(directory)
    (report,) = (tmp_path / "repo" / "reports").iterdir()
    assert f"## Data ({directory})" in (report / "report.md").read_text()


def test_the_optimizers_default_rate_is_recorded_as_a_number(tmp_path):
    """--learning-rate default was recorded as null in model.json: which rate trained it?"""
    result = run_training("--out", str(tmp_path), "--models", "softmax", "--train-subset",
                          "1000", "--epochs", "1", "--learning-rate", "default", "--progress",
                          "none")
    assert result.returncode == 0, result.stderr
    assert manifest(tmp_path, "softmax", 1)["training"]["learning_rate"] == 0.001  # Adam's


def test_a_bad_env_var_gives_one_line_naming_it(tmp_path):
    result = run_training("--out", str(tmp_path), env={"FMNIST_EPOCHS": "0"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fmnist-train: error: FMNIST_EPOCHS: expected a positive integer, got 0 "
        "(see fmnist-train --help)"
    ]


def test_help_names_the_env_var_of_every_flag():
    result = run_training("--help")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    for variable in ("FMNIST_OUT", "FMNIST_EPOCHS", "FMNIST_MLP_HIDDEN", "FMNIST_MLP_BATCH_NORM",
                     "FMNIST_BASELINE_N_JOBS", "FMNIST_DEBUG"):
        assert f"[env {variable}]" in text


def test_keras_progress_is_a_bar_only_on_a_terminal(monkeypatch):
    """A progress bar redrawn into a log file floods it: off a terminal, one line per epoch."""
    from training.options import build_parser

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert build_parser().parse_args(["--out", "x"]).progress == "epoch"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert build_parser().parse_args(["--out", "x"]).progress == "bar"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux's full disk)")
def test_a_standard_output_that_cannot_be_written_is_named(tmp_path):
    """`fmnist-train ... > /dev/full` (a full disk under a log file) said "fmnist-train: error:
    OSError: [Errno 28] No space left on device", naming nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "training", "--out", str(tmp_path / "r"),
                                 "--models", "baseline", "--train-subset", "500"], stdout=full,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=300,
                                check=False)
    assert (result.returncode, result.stderr) == (
        1, "fmnist-train: error: stdout: No space left on device\n")
    assert not (tmp_path / "r").exists()  # nothing published, nothing left


def test_a_standard_output_failing_after_publishing_keeps_the_report(tmp_path):
    """With PYTHONUNBUFFERED=1 (the image's) each line is written as printed: a log that could
    take no more past the "writing the report" line (a full disk, here a file-size limit) failed
    on the final table, after the versions were published, and the run's clean-up of a failed
    run deleted their report directory, leaving the versions without it."""
    import resource

    env = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "training", "--models", "baseline", "--train-subset", "500"]
    with open(tmp_path / "first.log", "w") as log:
        subprocess.run([*argv, "--out", str(tmp_path / "first")], stdout=log, env=env,
                       timeout=300, check=True)
    before_table = (tmp_path / "first.log").read_bytes().index(b"\nmodel ")
    limit = 16 * 2**20  # past any file of the run's but the log, which starts near it
    (tmp_path / "log").write_bytes(b"#" * (limit - before_table - 20))
    with open(tmp_path / "log", "a") as log:  # (Python ignores SIGXFSZ: the write fails)
        result = subprocess.run(
            [*argv, "--out", str(tmp_path / "r")], stdout=log, stderr=subprocess.PIPE,
            text=True, env=env, timeout=300, check=False,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert (result.returncode, result.stderr) == (1, (
        "fmnist-train: error: stdout: File too large (after the run published its models and "
        "their report)\n"))
    assert (tmp_path / "r" / "baseline" / "1" / MODEL_FILE).is_file()
    assert len(list((tmp_path / "r" / "reports").glob("*/report.md"))) == 1
