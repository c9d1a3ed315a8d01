"""``fmnist`` stopped mid-run, by Ctrl-C or SIGTERM: one line, saying how far it got, and the
exit status a shell gives a command its signal ended."""

import fcntl
import gc
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.conftest import local_settings, running_server

# SIGINT as a terminal's Ctrl-C finds it: a test run in the background inherits it ignored
AS_IN_A_TERMINAL = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
                    " from serving.client.cli import main; sys.exit(main())")


@pytest.mark.parametrize(("stop", "said", "with_json"), [(signal.SIGINT, "interrupted", False),
                                                    (signal.SIGTERM, "stopped (SIGTERM)", True)])
def test_a_score_stopped_midway_says_how_far_it_got_in_one_line(target, tmp_path, stop, said,
                                                                 with_json):
    """Ctrl-C mid-score exited 130 without a word, and SIGTERM (timeout(1), a job's end) killed
    it without one: a log ended at nothing, not saying the run was cut short. fmnist-train says
    'interrupted' or 'stopped (SIGTERM)'. The --csv rows are written as the answers come, and
    the run's stop leaves those of every image it counts (they were written at the end: a
    stopped run left none). --json was not written, and a previous run's file stayed, read as
    this one's: it holds the figures of the images answered, marked partial."""
    csv_path, json_path = tmp_path / "predictions.csv", tmp_path / "score.json"
    json_path.write_text('{"images": 10000, "model": {"accuracy": 0.9}}')  # a previous run's
    process = subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, "score", "--target", target, "--batch-size",
         "1", "--rpc", "unary", "--csv", str(csv_path), *["--json", str(json_path)] * with_json],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # mid-way through 10,000 calls: some rows written (a minute at most)
            if csv_path.exists() and len(csv_path.read_text().splitlines()) > 10:
                break
            time.sleep(0.1)
        process.send_signal(stop)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 128 + stop, (out, err)
    assert out == ""
    json_part = r", --json: partial, \1 images" if with_json else ""
    match = re.fullmatch(rf"fmnist score: {re.escape(said)} after (\d+) of 10000 images "
                         rf"\(--csv: \1 rows written{json_part}\)\n", err)
    assert match, err
    answered = int(match[1])
    assert 10 <= answered < 10000
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("index,")
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(answered)]
    if not with_json:
        return
    document = json.loads(json_path.read_text())
    assert (document["complete"], document["ended_by"]) == (False, "SIGTERM")
    assert (document["images"], document["offset"], document["batches"]) == (answered, 0,
                                                                             answered)
    rows = [line.split(",") for line in lines[1:]]  # index, true_label, model_label, ...
    assert document["model"]["accuracy"] == sum(row[1] == row[2] for row in rows) / answered
    assert document["expected_accuracy"] is None


@pytest.mark.parametrize("linked", [False, True])
def test_a_score_stopped_before_its_first_answer_leaves_no_previous_runs_files(tmp_path, linked):
    """Stopped in its first call (or the test set's load), a run said only "stopped (SIGTERM)",
    and a previous run's --csv and --json stayed, to be read as this run's. Its line says that
    none was written, and those files are gone. A --csv that is a link: the file it links to
    is gone, the link stays and is named with it (it was said removed, and was still there)."""
    import socket

    csv_path, json_path, real = tmp_path / "p.csv", tmp_path / "score.json", tmp_path / "r.csv"
    if linked:
        csv_path.symlink_to(real)
    (real if linked else csv_path).write_text("index\n0\n")
    json_path.write_text('{"images": 10000, "complete": true}')  # a previous run's
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.client", "score", "--target",
             f"127.0.0.1:{silent.getsockname()[1]}", "--csv", str(csv_path), "--json",
             str(json_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            silent.settimeout(60)
            connection = silent.accept()[0]  # the first call is under way
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
            connection.close()
        finally:
            process.kill()
    assert (process.returncode, out) == (128 + signal.SIGTERM, ""), err
    assert err == ("fmnist score: stopped (SIGTERM) before the first answer (--csv and --json "
                   f"not written: no image answered, the previous {csv_path}"
                   f"{f' -> {real}' if linked else ''} and {json_path} removed)\n")
    assert [path.name for path in tmp_path.iterdir()] == ["p.csv"] * linked


@pytest.mark.parametrize("rpc", ["unary", "stream"])
def test_a_score_whose_server_goes_away_says_what_its_files_hold(model_repository, tmp_path,
                                                                  rpc):
    """A run whose server went away midway said the error alone: the --csv rows answered so far
    were left without a word that they were part of the run, and --json was not written (a
    previous run's stayed). The error line says how far it got and what each file holds, as
    a stop's does; the JSON is marked partial, ended by an error."""
    csv_path, json_path = tmp_path / "predictions.csv", tmp_path / "score.json"
    with running_server(local_settings(model_repository=model_repository), grace=0) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.client", "score", "--target",
             f"127.0.0.1:{server.port}", "--batch-size", "1", "--rpc", rpc, "--csv",
             str(csv_path), "--json", str(json_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):  # mid-way through 10,000 answers (a minute at most)
                if csv_path.exists() and len(csv_path.read_text().splitlines()) > 10:
                    break
                time.sleep(0.1)
        except BaseException:
            process.kill()
            raise
    try:  # the server stopped, at once
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert (process.returncode, out) == (1, ""), err
    match = re.fullmatch(r"fmnist score: error: [A-Z_]+: .+; ended after (\d+) of 10000 images "
                         r"\(--csv: \1 rows written, --json: partial, \1 images\)\n", err)
    assert match, err
    answered = int(match[1])
    assert 10 <= answered < 10000
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    assert [row[0] for row in rows] == [str(i) for i in range(answered)]
    document = json.loads(json_path.read_text())
    assert (document["complete"], document["ended_by"], document["images"]) == (False, "error",
                                                                                 answered)


@pytest.mark.parametrize(("stop", "said", "images"), [
    (signal.SIGINT, "interrupted", 10000), (signal.SIGTERM, "stopped (SIGTERM)", 10000),
    (signal.SIGTERM, "stopped (SIGTERM)", 4000)])  # every answer in, more rows than the pipe takes
def test_a_stop_ends_a_score_whose_csv_reader_stopped_reading(target, stop, said, images):
    """`fmnist score --csv - | (sleep 100)`: the reader stopped reading, the CSV's writer was
    held in a write to the full pipe, and the stop waited for it forever (a second SIGTERM
    ended it, without saying how far it got); stopped as the run waited for it at its end, the
    line did not say either. The stop ends the run, and its line counts the rows the pipe
    took, fewer than the answers: never a row that was not written."""
    read, write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, "score", "--target", target, "--batch-size",
         "1", "--rpc", "unary", "--limit", str(images), "--csv", "-"],
        stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)  # the child's alone: at its end, the pipe's reader sees the end
    try:
        _until_the_writer_is_held(read)
        process.send_signal(stop)
        err = process.communicate(timeout=10)[1]  # it waited forever
    finally:
        process.kill()
        with os.fdopen(read) as pipe:
            lines = pipe.read().splitlines()
    assert process.returncode == 128 + stop, err
    match = re.fullmatch(rf"fmnist score: {re.escape(said)} after (\d+) of {images} images "
                         r"\(--csv: (\d+) rows? written\)\n", err)
    assert match, err
    answered, written = int(match[1]), int(match[2])
    assert written <= answered <= images
    assert lines[0].startswith("index,")
    assert [line.split(",")[0] for line in lines[1 : written + 1]] == [str(i)
                                                                      for i in range(written)]


def _until_the_writer_is_held(read: int) -> None:
    """Until the pipe whose read end is ``read`` is full and stays so (60 s at most): its
    writer is held in a write."""
    capacity, level = fcntl.fcntl(read, fcntl.F_GETPIPE_SZ), -1
    for _ in range(600):
        time.sleep(0.1)
        level, before = _unread(read), level
        if level > capacity - 4096 and level == before:
            return


def _unread(read: int) -> int:
    """How many bytes the pipe whose read end is ``read`` holds, not read yet."""
    return struct.unpack("i", fcntl.ioctl(read, termios.FIONREAD, b"\0" * 4))[0]


def test_a_sigterm_its_caller_ignores_stays_ignored():
    """A command started with SIGTERM ignored (a supervisor's choice, `trap '' TERM`) would have
    been stopped by it: the handler replaced the ignoring, as Python leaves an ignored SIGINT."""
    from serving.client.stops import sigterm_as_interrupt

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_stop_while_a_failed_score_waits_for_its_csv_says_how_far_it_got(model_repository,
                                                                          tmp_path):
    """A run whose server went away waits for its CSV's writer, to write every row; held by a
    reader that stopped reading (`--csv - | (sleep 100)`), it waits until stopped, and the stop
    then said only "stopped (SIGTERM)": neither the error nor how far the run got. The stop
    ends the wait, and the error's line says both, counting the rows the pipe took."""
    read, write = os.pipe()
    waiting = tmp_path / "waiting"  # made as the run, failed, begins to wait for the writer
    marks_the_wait = (
        "import pathlib; from serving.client.predictions import Predictions; "
        "close = Predictions.close; Predictions.close = lambda self, within=None: "
        f"(pathlib.Path({str(waiting)!r}).touch(), close(self, within))[1]; ")
    with running_server(local_settings(model_repository=model_repository), grace=0) as server:
        process = subprocess.Popen(
            [sys.executable, "-c", marks_the_wait + AS_IN_A_TERMINAL, "score", "--target",
             f"127.0.0.1:{server.port}", "--batch-size", "1", "--rpc", "unary", "--csv", "-"],
            stdout=write, stderr=subprocess.PIPE, text=True)
        os.close(write)
        try:
            _until_the_writer_is_held(read)
        except BaseException:
            process.kill()
            raise
    try:  # the server stopped, at once: the run's next call fails (retried for 0.3 s at most)
        for _ in range(600):  # a minute at most
            if waiting.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()  # it waits for the writer
        assert waiting.exists(), "the run did not fail within a minute of its server's end"
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=10)[1]
    finally:
        process.kill()
        os.close(read)
    assert process.returncode == 1, err
    match = re.fullmatch(r"fmnist score: error: [A-Z_]+: .+; ended after (\d+) of 10000 images "
                         r"\(--csv: (\d+) rows? written\)\n", err)
    assert match, err
    assert 0 < int(match[2]) <= int(match[1]) < 10000


def test_a_stop_during_the_json_write_leaves_the_file_whole(tmp_path):
    """A second stop while `fmnist score --json FILE` wrote its figures (a stopped run's, or a
    finished one's) cut the file: opened for writing, it was emptied, and the stop came before
    the JSON did; a previous run's figures were lost, and nothing took their place. A stop at
    each step of the write in turn (a real SIGINT, raised where the next one falls) leaves the
    file as it was or whole, and nothing beside it."""
    from serving.client.output_files import write_json

    path, previous, document = tmp_path / "score.json", '{"images": 1}\n', {"images": 2}
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    own = sys._getframe()  # its steps are not the write's
    gc.collect()  # no collection midway: a stop in its callbacks (weakref's) is lost
    gc.disable()  # (an unraisable exception) and the write goes on, as if past its end
    try:
        for step in itertools.count(1):
            path.write_text(previous)
            events, stopped = itertools.count(1), []

            def stop_at_step(frame, _event, _arg, step=step, events=events, stopped=stopped):
                if frame is not own and next(events) == step:
                    sys.setprofile(None)
                    stopped.append(frame.f_code.co_qualname)
                    os.kill(os.getpid(), signal.SIGINT)

            sys.setprofile(stop_at_step)
            try:
                write_json(path, document)
            except KeyboardInterrupt:
                pass
            else:
                assert not stopped, f"step {step}: the stop in {stopped[0]} was lost"
                break
            finally:
                sys.setprofile(None)
            assert path.read_text() in (previous, json.dumps(document, indent=2) + "\n"), step
            assert os.listdir(tmp_path) == ["score.json"], step
    finally:
        gc.enable()
        signal.signal(signal.SIGINT, handler)
    assert json.loads(path.read_text()) == document and os.listdir(tmp_path) == ["score.json"]
    assert step > 3  # stopped at every step before the last
