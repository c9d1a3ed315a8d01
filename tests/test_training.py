"""``fmnist-train`` end to end on a small subset: repository, report, table, seeding, env vars."""

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from common.contract import MANIFEST, MODEL_FILE
from training import data, export
from training.repository import sha256_file

MODELS = ("softmax", "mlp", "baseline")
PICTURES = {"confusion-matrices.png", "learning-curves.png"} | {
    f"samples-{name}.png" for name in MODELS
}
SMALL_RUN = {"train_subset": "1000", "epochs": "2", "mlp_hidden": "64", "batch_size": "64"}


def run_training(*flags: str, env: dict[str, str] | None = None,
                 preexec_fn=None) -> subprocess.CompletedProcess:
    # as from a user's shell: tf2onnx sets TF_CPP_MIN_LOG_LEVEL in this process's environment
    clean_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FMNIST_") and k != "TF_CPP_MIN_LOG_LEVEL"
    }
    return subprocess.run(
        [sys.executable, "-m", "training", *flags],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=clean_env | (env or {}),
        preexec_fn=preexec_fn,
    )


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


def manifest(out: Path, name: str, version: int) -> dict:
    return json.loads((out / name / str(version) / MANIFEST).read_text())


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


def test_bad_flags_give_one_line_and_a_nonzero_exit(tmp_path):
    result = run_training("--out", str(tmp_path), "--models", "softmax,cnn")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fmnist-train: error: argument --models: unknown model(s) cnn; choose from "
        "softmax,mlp,baseline (see fmnist-train --help)"
    ]


@pytest.mark.parametrize(("flag", "value"), [("--seed", "-1"), ("--split-seed", "4294967296")])
def test_a_seed_numpy_cannot_take_is_refused_before_fitting(tmp_path, flag, value):
    """It was taken, and the run failed after its first model's heading with numpy's
    "ValueError: Seed must be between 0 and 2**32 - 1"."""
    result = run_training("--out", str(tmp_path / "repo"), "--models", "baseline", flag, value)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: argument {flag}: expected an integer >= 0 and <= 4294967295, "
        f"got {value} (see fmnist-train --help)"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--out", "FILE"], "--out FILE: FILE is a file, not a directory"),
    (["--report-dir", "FILE"], "--report-dir FILE: FILE is a file, not a directory"),
    (["--out", "FILE/repo"], "--out FILE/repo: FILE is a file, not a directory"),
], ids=["out-file", "report-dir-file", "out-in-a-file"])
def test_an_output_directory_that_is_a_file_is_refused_with_the_flags(tmp_path, flags,
                                                                       message):
    """It failed later with a bare FileExistsError or NotADirectoryError, naming no flag."""
    (tmp_path / "file").write_text("")
    flags = [flag.replace("FILE", str(tmp_path / "file")) for flag in flags]
    result = run_training("--out", str(tmp_path / "repo"), *flags)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fmnist-train: error: {message.replace('FILE', str(tmp_path / 'file'))} "
        "(see fmnist-train --help)"]


def test_a_fit_that_diverged_publishes_nothing(tmp_path):
    """A learning rate of 1e30 made the MLP's probabilities NaN: the run published it with
    exit 0, a running server made it the default version (every image "T-shirt/top", nan%),
    and its model.json held NaN, which is not JSON."""
    out = tmp_path / "repo"
    result = run_training("--out", str(out), "--models", "mlp", "--no-mlp-batch-norm",
                          "--optimizer", "sgd", "--learning-rate", "1e30", "--lr-schedule",
                          "none", "--train-subset", "1000", "--epochs", "1", "--mlp-hidden", "64",
                          "--progress", "none")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fmnist-train: error: mlp: its probabilities are not finite numbers (the fit "
        "diverged: lower the learning rate); nothing was published"]
    assert not out.exists()


def test_a_model_no_better_than_one_answer_is_not_worth_publishing():
    from training.cli import TrainingError, check_worth_publishing

    labels = np.repeat(np.arange(10), 100)
    flat = np.full((1000, 10), 0.1, np.float32)
    with pytest.raises(TrainingError, match=r"^softmax: validation accuracy 0\.1000 is no "
                       r"better than always answering one class \(0\.1000\); nothing was "
                       r"published$"):
        check_worth_publishing("softmax", flat, flat, 0.1, labels)
    check_worth_publishing("softmax", flat, flat, 0.1001, labels)


def test_a_model_below_the_accuracy_asked_for_publishes_nothing(tmp_path):
    """A retraining job that must not replace a good model with a worse one sets a floor: the
    run fails, naming the model and the flag, before any version is published."""
    out = tmp_path / "repo"
    result = run_training("--out", str(out), "--models", "softmax,baseline", "--train-subset",
                          "1000", "--epochs", "1", "--progress", "none",
                          "--min-validation-accuracy", "0.95")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(r"fmnist-train: error: softmax: validation accuracy 0\.\d{4} is below "
                        r"--min-validation-accuracy 0\.95; nothing was published", line), line
    assert not out.exists()


def test_a_failed_run_leaves_no_empty_directory_behind(tmp_path):
    """The output directory is made before the minutes of fitting (to fail at once if it
    cannot be); a run that fails after that left it there, empty."""
    result = run_training("--out", str(tmp_path / "new"), "--models", "baseline",
                          "--train-subset", "5")
    assert result.returncode == 1
    assert "every class must be learned" in result.stderr
    assert not (tmp_path / "new").exists()


def test_a_run_that_cannot_write_one_model_publishes_none_and_names_the_file(tmp_path):
    """A full disk (here: a file size limit) while writing the mlp left the softmax published,
    the mlp's half-written staging directory behind, and an error naming no file."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))  # softmax's 31 KB fit

    out = tmp_path / "repo"
    result = run_training("--out", str(out), "--models", "softmax,mlp", "--train-subset", "1000",
                          "--epochs", "1", "--mlp-hidden", "64", "--progress", "none",
                          preexec_fn=small_files)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "File too large" in line and f"{out}/mlp/.staging-" in line and "model.onnx" in line
    assert not out.exists()  # no version, no staging directory, no empty report directory


@pytest.mark.parametrize("report_dir_given", [False, True], ids=["default", "given-empty"])
def test_a_run_whose_report_cannot_be_written_publishes_none(tmp_path, report_dir_given):
    """The versions were published before the report was written; a full disk then left
    them served after a run that failed, beside part of a report. A report directory the
    user made for the run is kept, empty, as it was given."""

    def small_files() -> None:
        # the model (32 KB) and the first two pictures (53 and 27 KB) fit, its samples (90) not
        resource.setrlimit(resource.RLIMIT_FSIZE, (70_000, 70_000))

    out, given = tmp_path / "repo", tmp_path / "report"
    flags = ["--report-dir", str(given)] if report_dir_given else []
    if report_dir_given:
        given.mkdir()
    result = run_training("--out", str(out), "--models", "softmax", "--train-subset",
                          "1000", "--epochs", "1", "--progress", "none", *flags,
                          preexec_fn=small_files)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "fmnist-train: error: OSError: [Errno 27] File too large: writing the report into "
        f"{given if report_dir_given else out / 'reports'}")
    assert not out.exists()  # no version, no staging directory, no part of a report
    assert list(given.iterdir()) == [] if report_dir_given else not given.exists()


SIGTERM_FROM = """
import importlib, os, signal, sys
from training import cli
module, name = sys.argv.pop(1).rsplit(".", 1)
target = importlib.import_module(module)
called = getattr(target, name)
def terminated_first(*args, **kwargs):  # what timeout(1), docker stop and Kubernetes send
    os.kill(os.getpid(), signal.SIGTERM)
    return called(*args, **kwargs)
setattr(target, name, terminated_first)
sys.exit(cli.main(sys.argv[1:]))
"""


def run_terminated_in(function: str, out: Path) -> subprocess.CompletedProcess:
    """A baseline-only run into ``out`` that gets SIGTERM as ``function`` is called."""
    return subprocess.run(
        [sys.executable, "-c", SIGTERM_FROM, function, "--out", str(out), "--models",
         "baseline", "--train-subset", "1000", "--progress", "none"],
        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("function", ["training.report.plot_confusion_matrices",
                                      "training.repository.sha256_file"],
                         ids=["writing-the-report", "staging-a-version"])
def test_a_run_stopped_by_sigterm_leaves_nothing_behind(tmp_path, function):
    """Ctrl-C was cleaned up, SIGTERM not: the models' staging directories and part of a
    report stayed, and no later run removed them."""
    result = run_terminated_in(function, tmp_path / "repo")
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "fmnist-train: stopped (SIGTERM)"
    assert not (tmp_path / "repo").exists()  # no version, no staging directory, no report


def test_a_run_stopped_by_sigterm_once_published_keeps_what_it_published(tmp_path):
    """A stop after the versions were published removed the run's report: a watching server
    served versions whose report was gone."""
    out = tmp_path / "repo"
    result = run_terminated_in("training.cli.print_table", out)
    assert result.returncode == -signal.SIGTERM
    assert (out / "baseline" / "1" / MODEL_FILE).is_file()
    [report] = (out / "reports").iterdir()
    assert (report / "report.md").is_file()


def test_a_baseline_stopped_by_its_iteration_limit_says_so(tmp_path):
    """"fitted in 0.5 s, 20 epochs" read as a finished fit: scikit-learn's ConvergenceWarning
    is silenced (a quick baseline is the point), and nothing said the limit had stopped it."""
    result = run_training("--out", str(tmp_path), "--models", "baseline", "--train-subset",
                          "1000", "--baseline-max-iter", "2", "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert ("2 epochs (--baseline-max-iter's limit, before --baseline-tol said it converged)"
            in result.stdout)


def test_a_train_subset_over_the_training_set_records_the_images_used(tmp_path):
    """model.json said 1,000,000 for a run that used the 60,000 there are."""
    result = run_training("--out", str(tmp_path), "--models", "baseline", "--train-subset",
                          "1000000", "--baseline-max-iter", "1")
    assert result.returncode == 0, result.stderr
    training = manifest(tmp_path, "baseline", 1)["training"]
    assert training["train_subset"] == 60000
    assert training["train_size"] + training["validation_size"] == 60000


@pytest.mark.parametrize("breakage", ["model-dir-is-a-file", "corrupt-highest-version"])
def test_a_repository_that_cannot_take_the_versions_is_refused_before_fitting(tmp_path,
                                                                              breakage):
    """Found after minutes of fitting, these failed the run at publishing time."""
    out = tmp_path / "repo"
    out.mkdir()
    if breakage == "model-dir-is-a-file":
        (out / "baseline").write_text("not a directory")
        expected = f"FileExistsError: [Errno 17] File exists: '{out / 'baseline'}'"
    else:
        (out / "baseline").mkdir()
        (out / "baseline" / ".highest-version").write_text("seven\n")
        expected = f"ValueError: {out / 'baseline' / '.highest-version'}: expected the highest"
    result = run_training("--out", str(out), "--models", "baseline", "--train-subset", "1000")
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"fmnist-train: error: {expected}"), line
    assert "== baseline" not in result.stdout  # nothing was fitted
    assert not (out / "reports").exists()


def test_a_report_dir_that_is_not_empty_is_refused_at_once(tmp_path):
    """Its old pictures would sit beside the new report as if they were this run's."""
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "learning-curves.png").write_bytes(b"old")
    result = run_training("--out", str(tmp_path / "repo"), "--report-dir", str(tmp_path / "report"))
    assert result.returncode == 2
    assert "--report-dir" in result.stderr and "not empty" in result.stderr
    assert not (tmp_path / "repo").exists()


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
