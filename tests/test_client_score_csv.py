"""``fmnist score --csv``: the path checked before the scoring, and every answer written whole
wherever it goes (a file, stdout, a named pipe), whatever the command's own streams are."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving.client import cli


def test_a_score_that_fails_leaves_no_csv_file_of_its_own(tmp_path, capsys):
    """The check that --csv can be written made the file: a failed run left it empty."""
    assert cli.main(["score", "--target", "127.0.0.1:9", "--timeout", "2", "--limit", "10",
                     "--no-progress", "--csv", str(tmp_path / "p.csv")]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_score_that_reaches_no_server_leaves_a_previous_runs_files(tmp_path, capsys):
    """Refused before the run (a misspelt --target), as by a usage error: a previous run's
    --csv and --json are that run's, not to be removed by a run that scored nothing."""
    csv_path, json_path = tmp_path / "p.csv", tmp_path / "score.json"
    csv_path.write_text("index\n0\n")
    json_path.write_text('{"images": 10000}')
    assert cli.main(["score", "--target", "127.0.0.1:9", "--timeout", "2", "--no-progress",
                     "--csv", str(csv_path), "--json", str(json_path)]) == 1
    assert "removed" not in capsys.readouterr().err
    assert (csv_path.read_text(), json_path.read_text()) == ("index\n0\n", '{"images": 10000}')


@pytest.mark.parametrize(("where", "reason"), [("no/such/dir.csv", "No such file or directory"),
                                               (".", "Is a directory")])
def test_score_checks_the_csv_path_before_it_scores(target, tmp_path, capsys, where, reason):
    """It scored every image, then failed writing and printed nothing of the run."""
    status = cli.main(["score", "--target", target, "--limit", "10", "--no-progress",
                       "--csv", str(tmp_path / where)])
    assert status == 2
    assert capsys.readouterr().err == (
        f"fmnist score: error: --csv {tmp_path / where}: {reason} (see fmnist score --help)\n")


def _score_five(target: str, csv_path, prefix=(), **run) -> subprocess.CompletedProcess:
    """``fmnist score`` of 5 images in a process of its own (run by ``prefix``), ``--csv
    csv_path``."""
    return subprocess.run([*prefix, sys.executable, "-m", "serving.client", "score", "--target",
                           target, "--limit", "5", "--no-progress", "--csv", str(csv_path)],
                          timeout=30, check=False, **run)


@pytest.mark.parametrize("into", ["file", "pipe"])
def test_the_csv_goes_to_stdout_whole_before_the_summary(target, tmp_path, into):
    """`--csv /dev/stdout > out.txt`: the file opened again was truncated and written from its
    start, then the summary printed over the CSV's first lines."""
    with open(tmp_path / "out.txt", "w") as out:
        result = _score_five(target, "/dev/stdout", text=True,
                             stdout=out if into == "file" else subprocess.PIPE)
    assert result.returncode == 0
    lines = (result.stdout or (tmp_path / "out.txt").read_text()).splitlines()
    assert [line.split(",")[0] for line in lines[:6]] == ["index", "0", "1", "2", "3", "4"]
    assert lines[6].startswith("images ") and lines[-1].split() == ["predictions", "/dev/stdout"]


def test_the_csv_goes_into_a_named_pipe(target, tmp_path):
    """The check that --csv can be written opened and closed the pipe: its reader took that
    for the end, and writing the CSV then waited for another reader forever."""
    os.mkfifo(tmp_path / "fifo")
    read = []
    reader = threading.Thread(target=lambda: read.append((tmp_path / "fifo").read_text()))
    reader.start()
    try:
        assert _score_five(target, tmp_path / "fifo", capture_output=True).returncode == 0
    finally:
        if reader.is_alive():  # the writer never came: let the reader end
            os.close(os.open(tmp_path / "fifo", os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
    assert read[0].splitlines()[0].startswith("index,") and len(read[0].splitlines()) == 6




@pytest.mark.parametrize("closed", [1, 2])
def test_a_csv_file_is_written_over_with_stdout_or_stderr_closed(target, tmp_path, closed):
    """`fmnist score --csv old.csv >&-` (or 2>&-, as some jobs run it) said "fmnist score:
    error: 'NoneType' object has no attribute 'fileno'": Python has no sys.stdout then."""
    (tmp_path / "old.csv").write_text("an earlier run's\n")
    result = _score_five(target, tmp_path / "old.csv", capture_output=True, text=True,
                         prefix=["sh", "-c", f'exec "$@" {closed}>&-', "sh"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "old.csv").read_text().splitlines()[-1].startswith("4,")


@pytest.mark.parametrize("into", ["fifo", "stdout"])
def test_a_csv_reader_that_stops_early_fails_the_run(target, tmp_path, into):
    """`fmnist score --csv /dev/stdout | head -1` (or a named pipe whose reader quit) exited 0,
    and printed nothing: neither the summary nor a word that the CSV was cut short."""
    where = tmp_path / "fifo" if into == "fifo" else "/dev/stdout"
    if into == "fifo":
        os.mkfifo(where)
    process = subprocess.Popen([sys.executable, "-m", "serving.client", "score", "--target",
                                target, "--limit", "3000", "--no-progress", "--csv", str(where)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with open(where, "rb") if into == "fifo" else process.stdout as reader:
            assert len(reader.read(100)) == 100  # then it quits, as `head -c 100` does
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    assert stderr.decode() == (f"fmnist score: error: --csv {where}: its reader stopped before "
                               "the CSV's end (of 3000 rows)\n")


def test_a_csv_of_dash_goes_to_stdout(target, tmp_path):
    """`fmnist score --csv - | ...` wrote a file named '-' where it ran, and stdout had only
    the summary."""
    here = {"cwd": tmp_path, "env": {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}}
    result = _score_five(target, "-", capture_output=True, text=True, **here)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(",")[0] for line in lines[:6]] == ["index", "0", "1", "2", "3", "4"]
    assert lines[6].startswith("images ") and lines[-1].split() == ["predictions", "-"]
    assert list(tmp_path.iterdir()) == []
    closed = _score_five(target, "-", capture_output=True, text=True, **here,
                         prefix=["sh", "-c", 'exec "$@" >&-', "sh"])
    assert (closed.returncode, closed.stderr) == (2, "fmnist score: error: --csv -: stdout is "
                                                     "closed (see fmnist score --help)\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux's full disk)")
@pytest.mark.parametrize("csv_path", ["/dev/full", "/dev/stdout", "-"])
def test_a_csv_that_cannot_be_written_is_named(target, csv_path):
    """A full disk under --csv said "fmnist score: error: [Errno 28] No space left on device",
    Python's words, naming no file."""
    with open("/dev/full", "w") as full:
        result = _score_five(target, csv_path, stdout=full, stderr=subprocess.PIPE, text=True)
    assert (result.returncode, result.stderr) == (
        1, f"fmnist score: error: --csv {csv_path}: No space left on device\n")
