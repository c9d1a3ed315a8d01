"""``fmnist score --confusion-matrix`` and ``--json``: each class's accuracy and the confusion
matrix a person reads, and every figure of the run for a program, against a real server."""

import json
import subprocess
import sys

import numpy as np
import pytest

from common.contract import CLASS_NAMES
from serving.client import cli
from tests.conftest import reference


def counted(labels, answered) -> list[list[int]]:
    """The confusion matrix, counted image by image: [true class][answered class]."""
    matrix = [[0] * len(CLASS_NAMES) for _ in CLASS_NAMES]
    for true, answer in zip(labels.tolist(), answered.tolist(), strict=True):
        matrix[true][answer] += 1
    return matrix


def test_score_prints_the_confusion_matrix_and_each_class_accuracy(target, capsys, test_set,
                                                                    model_repository):
    """It printed the model's accuracy alone: which classes it confused, and how well it did
    on each, were nowhere but in training's report (the fitted model's, not the served one)."""
    assert cli.main(["score", "--target", target, "--offset", "100", "--limit", "700",
                     "--batch-size", "256", "--no-progress", "--confusion-matrix"]) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = test_set[1][100:800]
    _, answered = reference(model_repository, "mlp", 2, test_set[0][100:800])
    expected = counted(labels, answered)
    start = lines.index("mlp v2 confusion matrix: a row per true class, a column per class "
                        "answered")
    assert lines[start - 1] == "" and lines[start - 2].startswith("latency per batch")
    header, *rows = lines[start + 1:]
    assert header.split() == [*map(str, range(10)), "accuracy"]
    assert len(rows) == 10
    for label, (line, counts) in enumerate(zip(rows, expected, strict=True)):
        name = f"{label} {CLASS_NAMES[label]}"
        assert line.startswith(name + " ")
        cells = line[len(name):].split()
        assert [int(cell) for cell in cells[:-1]] == counts
        assert cells[-1] == f"{counts[label] / sum(counts):.4f}"
    assert len({len(line) for line in [header, *rows]}) == 1  # right-aligned columns
    assert len(header) <= 80


def test_score_writes_every_figure_as_json_even_when_the_accuracy_is_not_met(target, capsys,
                                                                              tmp_path, test_set,
                                                                              model_repository):
    """No machine-readable summary: a job checking a served model parsed the printed rows."""
    path = tmp_path / "score.json"
    assert cli.main(["score", "--target", target, "--limit", "600", "--batch-size", "200",
                     "--rpc", "unary", "--no-progress", "--json", str(path),
                     "--expect-accuracy", "0.99"]) == 1
    out = capsys.readouterr().out
    assert f"json summary           {path}\n" in out
    document = json.loads(path.read_text())
    images, labels = test_set[0][:600], test_set[1][:600]
    for side, (name, version) in (("model", ("mlp", 2)), ("baseline", ("baseline", 1))):
        _, answered = reference(model_repository, name, version, images)
        figures = document[side]
        assert (figures["name"], figures["version"]) == (name, version)
        assert figures["accuracy"] == np.mean(answered == labels)
        assert figures["confusion_matrix"] == counted(labels, answered)
        per_class = figures["per_class"]
        assert list(per_class) == list(CLASS_NAMES)
        for label, class_name in enumerate(CLASS_NAMES):
            mine = labels == label
            assert per_class[class_name] == {"images": int(mine.sum()),
                                             "accuracy": np.mean(answered[mine] == label)}
    _, model_answers = reference(model_repository, "mlp", 2, images)
    _, baseline_answers = reference(model_repository, "baseline", 1, images)
    assert document["agreement"] == np.mean(model_answers == baseline_answers)
    assert document["expected_accuracy"] == {"accuracy": 0.99, "tolerance": 0.0001, "met": False}
    assert (document["images"], document["offset"], document["batches"],
            document["batch_size"], document["rpc"]) == (600, 0, 3, 200, "unary")
    assert document["images_per_second"] > 0 and document["latency_ms"]["p99"] > 0


def test_json_on_stdout_is_the_json_alone(target):
    """`--json - | jq`: stdout holds the JSON only, the summary goes to stderr; a class with no
    image in the slice has no accuracy (null, "-" in the table), not NaN, which is not JSON."""
    result = subprocess.run([sys.executable, "-m", "serving.client", "score", "--target", target,
                             "--limit", "5", "--json", "-", "--confusion-matrix"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["images"] == 5
    assert document["model"]["per_class"]["T-shirt/top"] == {"images": 0, "accuracy": None}
    assert result.stderr.startswith("images                 5 (test set 0..4)\n")
    (absent,) = [line for line in result.stderr.splitlines() if line.startswith("0 T-shirt/top ")]
    assert absent.split()[-1] == "-"


def test_score_checks_the_json_path_before_it_scores(target, tmp_path, capsys):
    """A --json that cannot be written, or the file --csv writes, is refused before the
    images are sent."""
    base = ["score", "--target", target, "--limit", "10", "--no-progress"]
    assert cli.main([*base, "--json", str(tmp_path / "no" / "such.json")]) == 2
    assert capsys.readouterr().err == (
        f"fmnist score: error: --json {tmp_path}/no/such.json: No such file or directory (see "
        "fmnist score --help)\n")
    both = str(tmp_path / "out")
    assert cli.main([*base, "--json", both, "--csv", both]) == 2
    assert capsys.readouterr().err == (
        f"fmnist score: error: --csv {both} and --json {both}: the same file; give each its "
        "own (see fmnist score --help)\n")
    assert list(tmp_path.iterdir()) == []


def test_csv_and_json_both_on_stdout_are_refused(target):
    """`--csv - --json -` wrote the CSV and then the JSON into one stdout, which neither a CSV
    reader nor jq could read; both going to stdout is the same file."""
    result = subprocess.run([sys.executable, "-m", "serving.client", "score", "--target", target,
                             "--limit", "5", "--csv", "-", "--json", "-"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("fmnist score: error: --csv - and --json -: the same file; give "
                             "each its own (see fmnist score --help)\n")


@pytest.mark.parametrize(("into", "said"), [
    ("/dev/full", "No space left on device"),
    ("-", "its reader stopped before the JSON's end")])
def test_a_json_that_cannot_be_written_fails_the_run_naming_it(target, into, said):
    """`--json -` into a reader that had quit (a fifo's, a pipe's) exited 0 with nothing said,
    even with the accuracy not met, and --json on a full disk said Python's '[Errno 28] No
    space left on device', naming no file: as --csv's, each is now one line naming it."""
    process = subprocess.Popen([sys.executable, "-m", "serving.client", "score", "--target",
                                target, "--limit", "5", "--no-progress", "--json", into,
                                "--expect-accuracy", "0.99"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader quits before the JSON comes, as `| true` does
    try:
        stderr = process.stderr.read()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert (process.returncode, stderr) == (1, f"fmnist score: error: --json {into}: {said}\n")


def test_a_quick_scores_duration_is_shown_in_digits_that_say_it(target, capsys, tmp_path):
    """A run of a few images printed its duration as "(0.00 s)": nothing a person can read."""
    import re

    json_path = tmp_path / "score.json"
    assert cli.main(["score", "--target", target, "--limit", "5", "--no-progress", "--json",
                     str(json_path)]) == 0
    seconds = json.loads(json_path.read_text())["seconds"]
    shown = re.search(r"images/s \((\S+) (ms|s)\)", capsys.readouterr().out)
    assert shown, "no duration on the throughput row"
    shown_seconds = float(shown[1]) / (1000 if shown[2] == "ms" else 1)
    assert shown_seconds > 0 and abs(shown_seconds - seconds) <= 0.01 * seconds, shown[0]
