"""``fmnist-train`` refusing what it cannot do, and failing or stopped runs: one line on
stderr, and nothing half-published left behind."""

import contextlib
import os
import pty
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.contract import MODEL_FILE
from tests.training_runs import run_training, unremovable


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
    with pytest.raises(TrainingError, match=r"no better than always answering one class"):
        check_worth_publishing("softmax", flat, flat, float(np.float32(0.1)), labels)  # Keras'
    check_worth_publishing("softmax", flat, flat, 0.1001, labels)


def test_a_keras_model_that_answers_one_class_publishes_nothing(tmp_path):
    """Keras' float32 validation accuracy 0.1075 is 0.10750000178813934, above the 0.1075 of
    the commonest class: an MLP answering "Sneaker" to every image (test accuracy 0.1000) was
    published with exit 0."""
    out = tmp_path / "repo"
    result = run_training("--out", str(out), "--models", "mlp", "--train-subset", "2000",
                          "--epochs", "2", "--learning-rate", "1e9", "--progress", "none")
    assert result.returncode == 1, result.stdout[-2000:]
    assert result.stderr.strip().splitlines() == [
        "fmnist-train: error: mlp: validation accuracy 0.1075 is no better than always "
        "answering one class (0.1075); nothing was published"]
    assert not out.exists()


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


def test_a_floor_set_by_its_env_var_is_named_by_it(tmp_path):
    """A retraining job with FMNIST_MIN_VALIDATION_ACCURACY=0.95 failed "below
    --min-validation-accuracy 0.95", a flag on none of its command lines."""
    result = run_training("--out", str(tmp_path / "repo"), "--models", "baseline",
                          "--train-subset", "1000", env={"FMNIST_MIN_VALIDATION_ACCURACY": "0.95"})
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(r"fmnist-train: error: baseline: validation accuracy 0\.\d{4} is below "
                        r"FMNIST_MIN_VALIDATION_ACCURACY=0\.95; nothing was published", line), line


def test_a_failed_run_leaves_no_empty_directory_behind(tmp_path):
    """The output directory is made before the minutes of fitting (to fail at once if it
    cannot be); a run that fails after that left it there, empty, and then still left the
    directories it had made on the way to it and to the report's (new/deeper, reports)."""
    result = run_training("--out", str(tmp_path / "new" / "deeper" / "repo"), "--models",
                          "baseline", "--train-subset", "5", "--report-dir",
                          str(tmp_path / "reports" / "run"))
    assert result.returncode == 1
    assert "every class must be learned" in result.stderr
    assert list(tmp_path.iterdir()) == []


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
        "fmnist-train: error: File too large: writing the report into "
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


def test_a_repository_that_cannot_take_the_versions_is_refused_before_fitting(tmp_path):
    """Found after minutes of fitting, this failed the run at publishing time (a file where a
    model's directory goes is refused with the flags: see the test above)."""
    out = tmp_path / "repo"
    (out / "baseline").mkdir(parents=True)
    (out / "baseline" / ".highest-version").write_text("seven\n")
    expected = f"{out / 'baseline' / '.highest-version'}: expected the highest"
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


def test_a_path_set_by_its_env_var_is_named_by_it(tmp_path):
    """A retraining job configured with FMNIST_REPORT_DIR failed its second run with
    "--report-dir /x: not empty", a flag on no command line of the job's."""
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("the first run's")
    (tmp_path / "file").write_text("")
    for env, message in (
            ({"FMNIST_REPORT_DIR": str(tmp_path / "report")},
             f"FMNIST_REPORT_DIR={tmp_path / 'report'}: not empty"),
            ({"FMNIST_OUT": str(tmp_path / "file")},
             f"FMNIST_OUT={tmp_path / 'file'}: {tmp_path / 'file'} is a file")):
        result = run_training(*([] if "FMNIST_OUT" in env else ["--out", str(tmp_path)]),
                              env=env)
        assert result.returncode == 2
        assert result.stderr.startswith(f"fmnist-train: error: {message}"), result.stderr
    result = run_training("--out", str(tmp_path), f"--report-dir={tmp_path / 'report'}",
                          env={"FMNIST_REPORT_DIR": str(tmp_path / "x")})  # the flag wins
    assert result.stderr.startswith(f"fmnist-train: error: --report-dir {tmp_path / 'report'}: "
                                    "not empty"), result.stderr


@pytest.mark.parametrize("unwritable", ["repository", "model"])
def test_a_repository_that_cannot_be_written_is_named_in_one_line(tmp_path, unwritable):
    """A read-only --out (another user's, immutable) ended the run with Python's words,
    "error: PermissionError: [Errno 13] Permission denied: '/x/repo'"; a read-only model's
    directory was named by the hidden staging directory the run had tried to make in it."""
    out = tmp_path / "repo"
    if unwritable == "model":
        (out / "baseline").mkdir(parents=True)
    named = out / "baseline" if unwritable == "model" else out
    with unremovable(named if unwritable == "model" else tmp_path):
        result = run_training("--out", str(out), "--models", "baseline", "--train-subset", "500")
    error = os.strerror(1 if os.geteuid() == 0 else 13)  # EPERM (immutable), EACCES
    assert (result.returncode, result.stderr) == (1, f"fmnist-train: error: {named}: {error}\n")


# SIGINT as a terminal's Ctrl-C finds it: a test run in the background inherits it ignored
AS_IN_A_TERMINAL = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
                    " from training.cli import main; sys.exit(main())")


@pytest.mark.parametrize(("flags", "drawn_after"), [
    (["softmax", "--train-subset", "3000", "--epochs", "100", "--batch-size", "8"], b"Epoch 1/"),
    (["baseline", "--baseline-tol", "none", "--baseline-max-iter", "1000"], b"fitting SGD")],
    ids=["keras", "baseline"])
def test_a_stop_on_a_terminal_is_said_on_a_line_of_its_own(tmp_path, flags, drawn_after):
    """Ctrl-C mid-epoch on a terminal: "fmnist-train: interrupted" was written at the end of
    Keras' progress bar, whose line (redrawn with "\\r") only its epoch's end ends; and so
    after the baseline's seconds so far (its fit, 25 s on all images, said nothing). A real
    terminal (a pty), the real bar, SIGINT as Ctrl-C sends it, once the bar is drawn."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    with subprocess.Popen(
            [sys.executable, "-c", AS_IN_A_TERMINAL, "--out", str(tmp_path), "--models", *flags],
            stdin=terminal, stdout=terminal, stderr=terminal, env=env) as run:
        os.close(terminal)
        shown = b""
        while not re.search(rb"\r[^\n]", shown.partition(drawn_after)[2]):  # the bar drawn
            chunk = b""
            with contextlib.suppress(OSError):  # EIO: the run ended, and drew none
                chunk = os.read(controller, 4096)
            assert chunk, shown.decode(errors="replace")
            shown += chunk
        run.send_signal(signal.SIGINT)
        with contextlib.suppress(OSError):  # EIO: the run ended, the terminal closed
            while chunk := os.read(controller, 4096):
                shown += chunk
        assert run.wait(timeout=300) == 128 + signal.SIGINT
    os.close(controller)
    assert "fmnist-train: interrupted" in shown.decode().splitlines(), shown[-300:]
