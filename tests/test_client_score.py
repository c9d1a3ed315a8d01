"""``fmnist score`` and ``joined`` against a real server: accuracies, CSV, the test set's
checks, expected accuracy, and one model version per run."""

import csv
import gzip
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from serving.client import cli
from serving.client.api import ClassifierClient
from tests.conftest import reference

HOW_TO_GET = ("install them with `apt-get install dataset-fashion-mnist`, or point --data-dir (or "
              "FMNIST_DATA_DIR) at a directory holding Fashion-MNIST's IDX files")


def test_answers_from_two_versions_are_not_joined_as_one(target, test_set):
    """A version published between two calls of one run: its figures would mix two models
    under the first one's name."""
    from serving.client.api import joined

    with ClassifierClient(target) as client:
        answers = [client.classify(test_set[0][:2], "mlp", version) for version in (1, 2, 2)]
    assert len(joined(answers[1:])) == 4
    with pytest.raises(ValueError, match=r"the model changed version during the run "
                                         r"\(mlp v1, mlp v2: one was published or removed\)"):
        joined(answers)


def test_score_draws_no_progress_bar_into_a_log(target, capsys):
    """With stderr not a terminal (a log, a pipe), the bar's every redraw went into it."""
    assert cli.main(["score", "--target", target, "--limit", "600", "--batch-size", "100",
                     "--rpc", "unary"]) == 0
    assert "img/s" not in capsys.readouterr().err


def test_score_a_slice_prints_accuracies_and_writes_csv(target, tmp_path, capsys, test_set,
                                                        model_repository):
    csv_path = tmp_path / "predictions.csv"
    status = cli.main(["score", "--target", target, "--offset", "100", "--limit", "700",
                       "--batch-size", "256", "--csv", str(csv_path), "--no-progress"])
    output = capsys.readouterr().out
    assert status == 0
    images, labels = test_set[0][100:800], test_set[1][100:800]
    _, model_labels = reference(model_repository, "mlp", 2, images)
    _, baseline_labels = reference(model_repository, "baseline", 1, images)
    rows = {line[:22].strip(): line[23:] for line in output.splitlines()}
    assert rows["images"] == "700 (test set 100..799)"
    assert rows["mlp v2 accuracy"] == f"{np.mean(model_labels == labels):.4f}"
    assert rows["baseline v1 accuracy"] == f"{np.mean(baseline_labels == labels):.4f}"
    assert rows["agreement"] == f"{np.mean(model_labels == baseline_labels):.4f}"
    assert "images/s" in rows["throughput"]
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 700
    assert [int(row["model_label"]) for row in table] == model_labels.tolist()
    assert table[0]["index"] == "100" and int(table[0]["true_label"]) == labels[0]
    assert all(len(row["model_probability"]) <= 8 for row in table)  # 6 decimals, no float32 tail


def test_score_refuses_a_test_set_that_is_not_fashion_mnist(target, capsys, tmp_path):
    """One label changed: it scored 0.8986 instead of 0.8987 without a word, while
    fmnist-train refused the same file."""
    from common.contract import DATA_SHA256
    from common.dataset import DEFAULT_DATA_DIR

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DEFAULT_DATA_DIR / name, tmp_path / name)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[-1] = (content[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))
    assert cli.main(["score", "--target", target, "--data-dir", str(tmp_path), "--limit", "10",
                     "--no-progress"]) == 1
    digest = hashlib.sha256(bytes(content)).hexdigest()
    expected = DATA_SHA256["t10k-labels-idx1-ubyte"]
    assert capsys.readouterr().err == (
        f"fmnist score: error: {labels}: not Fashion-MNIST's t10k-labels-idx1-ubyte (corrupt, "
        f"or other data): its content SHA-256 is {digest[:16]}..., expected {expected[:16]}...; "
        f"{HOW_TO_GET}\n")


def test_score_names_the_missing_file_and_the_flag_to_fix(target, capsys, tmp_path):
    """Given --data-dir, it told the user to set FMNIST_DATA_DIR instead."""
    assert cli.main(["score", "--target", target, "--data-dir", str(tmp_path), "--limit", "10",
                     "--no-progress"]) == 1
    assert capsys.readouterr().err == (
        f"fmnist score: error: {tmp_path}/t10k-images-idx3-ubyte[.gz] not found; {HOW_TO_GET}\n")


def test_classify_reads_the_test_set_from_the_data_dir_its_error_names(target, capsys,
                                                                       tmp_path):
    """fmnist classify --test-index, the test set missing, said "point --data-dir (or
    FMNIST_DATA_DIR)", and refused --data-dir: "unrecognized arguments"."""
    from common.dataset import DEFAULT_DATA_DIR

    argv = ["classify", "--target", target, "--test-index", "0", "--data-dir"]
    assert cli.main([*argv, str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"fmnist classify: error: {tmp_path}/t10k-images-idx3-ubyte[.gz] not found; "
        f"{HOW_TO_GET}\n")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DEFAULT_DATA_DIR / name, tmp_path / name)
    assert cli.main([*argv, str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("test[0]  (true: Ankle boot)\n")


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_an_accuracy_not_met_fails_the_run_whoever_reads_the_summary(target, unbuffered):
    """`fmnist score --expect-accuracy A | grep -q ...` (a reader that quits early): with
    PYTHONUNBUFFERED=1, as in this project's image, the summary's broken pipe ended the run
    with exit 0 and not a word of the accuracy that was not met; without it, exit 120 and
    Python's 'Exception ignored ... BrokenPipeError' under the error line."""
    process = subprocess.Popen([sys.executable, "-m", "serving.client", "score", "--target",
                                target, "--limit", "5", "--no-progress", "--expect-accuracy",
                                "0.99"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    process.stdout.close()  # the reader quits before the summary comes
    try:
        stderr = process.stderr.read()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    assert stderr.startswith("fmnist score: error: served accuracy ") and stderr.count("\n") == 1


def test_score_expect_accuracy_fails_when_the_served_accuracy_differs(target, capsys):
    base = ["score", "--target", target, "--limit", "300", "--no-progress", "--rpc", "unary",
            "--batch-size", "100"]
    assert cli.main([*base, "--expect-accuracy", "0.99"]) == 1
    assert "differs from the expected 0.9900" in capsys.readouterr().err
    capsys.readouterr()
    cli.main(base)
    accuracy = next(line for line in capsys.readouterr().out.splitlines()
                    if line.startswith("mlp v2 accuracy")).split()[-1]
    assert cli.main([*base, "--expect-accuracy", accuracy, "--tolerance", "0.0001"]) == 0
    assert f"expected accuracy      {accuracy} ± 0.0001: met" in capsys.readouterr().out


def test_an_accuracy_as_far_from_the_expected_one_as_the_tolerance_allows_is_met(target,
                                                                                 capsys):
    """abs(0.6585 - 0.6584) is 1.00000000000011e-04 in floats: a served accuracy one image
    (0.0001) from the expected one was "± 0.0001: NOT met" and failed the run, exit 1."""
    base = ["score", "--target", target, "--limit", "1000", "--no-progress"]
    assert cli.main(base) == 0
    accuracy = float(next(line for line in capsys.readouterr().out.splitlines()
                          if line.startswith("mlp v2 accuracy")).split()[-1])  # k / 1000
    cases = [(expected, tolerance)
             for tolerance in (0.0001, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
             for expected in (round(accuracy - tolerance, 4), round(accuracy + tolerance, 4))
             if 0 <= expected <= 1 and abs(accuracy - expected) > tolerance]
    assert cases  # differences that only float rounding puts past the tolerance
    for expected, tolerance in cases:
        assert cli.main([*base, "--expect-accuracy", str(expected), "--tolerance",
                         str(tolerance)]) == 0, (expected, tolerance)
        assert f"expected accuracy      {expected:.4f} ± {tolerance:g}: met\n" in (
            capsys.readouterr().out)


def test_scoring_the_baseline_itself_prints_it_once(target, capsys):
    """--model baseline printed its accuracy twice, and an agreement of 1.0000 with itself."""
    assert cli.main(["score", "--target", target, "--limit", "100", "--no-progress",
                     "--model", "baseline"]) == 0
    names = [line[:22].strip() for line in capsys.readouterr().out.splitlines()]
    assert names == ["images", "baseline v1 accuracy", "throughput", "latency per batch"]


def test_expect_accuracy_manifest_is_refused_for_a_slice_of_the_test_set(target, capsys):
    """model.json's accuracy is the whole test set's: a model served right failed against
    1,000 images (0.8060 against 0.7934)."""
    assert cli.main(["score", "--target", target, "--offset", "1", "--no-progress",
                     "--expect-accuracy", "manifest"]) == 2
    assert capsys.readouterr().err == (
        "fmnist score: error: --expect-accuracy manifest: model.json records the accuracy over "
        "all 10000 test images; drop --offset and --limit, or give a fraction (see fmnist "
        "score --help)\n")


def test_expect_accuracy_manifest_without_a_recorded_accuracy_says_so(repository_copy, capsys):
    """A model.json with no metrics (another trainer's) failed the run: "differs from the
    expected 0.0000", as if the model were wrong."""
    import json

    from tests.conftest import local_settings, running_server

    manifest = repository_copy / "mlp" / "2" / "model.json"
    document = json.loads(manifest.read_text())
    del document["metrics"]
    manifest.write_text(json.dumps(document))
    with running_server(local_settings(model_repository=repository_copy)) as server:
        status = cli.main(["score", "--target", f"127.0.0.1:{server.port}", "--no-progress",
                           "--expect-accuracy", "manifest"])
    assert status == 2
    assert capsys.readouterr().err == (
        "fmnist score: error: --expect-accuracy manifest: the model.json of mlp v2 records no "
        "test accuracy; give a fraction instead (see fmnist score --help)\n")


@pytest.mark.parametrize("rpc", ["stream", "unary"])
def test_score_keeps_to_the_version_of_its_first_answer(repository_copy, capsys, monkeypatch,
                                                        rpc):
    """A version published during a run: the calls after it asked for the newest, and the run
    failed at its end ("the model changed version"), every image scored for nothing."""
    from serving.client import scoring
    from tests.conftest import local_settings, publish_mlp_v3, running_server

    settings = local_settings(model_repository=repository_copy, poll_interval=0.1)
    with running_server(settings) as server:
        target = f"127.0.0.1:{server.port}"

        class PublishedAfterTheFirstAnswer(scoring.tqdm):
            def update(self, n=1):
                if not (repository_copy / "mlp" / "3").exists():
                    publish_mlp_v3(repository_copy, target)
                return super().update(n)

        monkeypatch.setattr(scoring, "tqdm", PublishedAfterTheFirstAnswer)
        status = cli.main(["score", "--target", target, "--rpc", rpc, "--batch-size", "10",
                           "--no-progress"])
    output = capsys.readouterr()
    assert status == 0, output.err
    assert "mlp v2 accuracy" in output.out


def test_the_client_keeps_to_the_servers_max_request_images(model_repository, tmp_path, capsys,
                                                             test_set):
    """A server started with --max-request-images 100 (FMNIST_MAX_REQUEST_IMAGES, a compose
    setting) refused `fmnist score` with its defaults (1000 images a call) and `fmnist
    classify` of 300 images (256 a call), neither with a flag to fix it."""
    from tests.conftest import local_settings, running_server

    np.save(tmp_path / "many.npy", test_set[0][:300])
    with running_server(local_settings(model_repository=model_repository,
                                       max_request_images=100)) as server:
        target = ["--target", f"127.0.0.1:{server.port}"]
        classified = cli.main(["classify", *target, "--top", "1", str(tmp_path / "many.npy")])
        assert (classified, len(capsys.readouterr().out.splitlines())) == (0, 300 * 3)
        assert cli.main(["score", *target, "--limit", "300", "--no-progress"]) == 0
        assert "(3 batches of <= 100, stream)" in capsys.readouterr().out
        assert cli.main(["score", *target, "--limit", "5", "--no-progress"]) == 0
        assert "(1 batch of <= 100, stream)" in capsys.readouterr().out  # said "1 batches"
        assert cli.main(["score", *target, "--batch-size", "500", "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        "fmnist score: error: --batch-size 500: the server takes at most 100 images a call "
        "(its --max-request-images) (see fmnist score --help)\n")


def test_score_with_stderr_closed_scores(target):
    """`fmnist score 2>&-` (a job that closes stderr) failed, exit 1, saying on stdout
    "'NoneType' object has no attribute 'isatty'": the progress bar asked a stderr Python has
    not."""
    import subprocess
    import sys

    result = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m",
                             "serving.client", "score", "--target", target, "--limit", "5"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0] == "images                 5 (test set 0..4)"


def test_the_default_model_has_the_servers_max_request_images(target):
    """`max_request_images("")` was NOT_FOUND ("name: no model ''") where `classify(images,
    "")` takes the server's default model: a caller passing on its model argument had to
    name one for the limit alone."""
    from serving.settings import Settings

    with ClassifierClient(target) as client:
        assert client.max_request_images("") == client.max_request_images("mlp") == (
            Settings().max_request_images)
        assert client.max_request_images() == Settings().max_request_images
