"""``training.cli.main(argv)`` called in a process that goes on after it (a notebook, a
retraining job in Python): the process is left as it was."""

import signal

import pytest

from training.cli import main

STOPS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture
def own_handlers():
    """The caller's own SIGINT and SIGTERM handlers, in place during the test, put back after."""
    before = {stop: signal.getsignal(stop) for stop in STOPS}

    def handler(_signal, _frame):  # never called: compared only
        raise AssertionError

    mine = {signal.SIGINT: handler, signal.SIGTERM: lambda *_: None}
    for stop, function in mine.items():
        signal.signal(stop, function)
    yield mine
    for stop, function in before.items():
        signal.signal(stop, function)


@pytest.mark.parametrize(("subset", "status"), [("5", 1), ("500", 0)], ids=["failed", "published"])
def test_a_run_in_process_gives_the_callers_signal_handlers_back(tmp_path, own_handlers, capsys,
                                                                 subset, status):
    """After a failed run Ctrl-C and SIGTERM were ignored for the rest of the process
    (SIG_IGN); after a published one Ctrl-C killed the process (SIG_DFL) instead of raising
    KeyboardInterrupt, and SIGTERM no longer reached the caller's handler."""
    assert main(["--out", str(tmp_path / "repo"), "--models", "baseline", "--train-subset",
                 subset]) == status, capsys.readouterr().err
    assert {stop: signal.getsignal(stop) for stop in STOPS} == own_handlers


@pytest.mark.parametrize(("subset", "status"), [("5", 1), ("500", 0)], ids=["failed", "published"])
def test_a_run_in_a_thread_runs(tmp_path, capsys, subset, status):
    """A job calling main() from a worker thread got a traceback, "ValueError: signal only
    works in main thread of the main interpreter", and no run: signals go to the main thread,
    whose handlers a thread cannot set, so the run takes none of them there."""
    import threading

    ended = []
    worker = threading.Thread(target=lambda: ended.append(main(
        ["--out", str(tmp_path / "repo"), "--models", "baseline", "--train-subset", subset])))
    worker.start()
    worker.join(timeout=120)
    assert ended == [status], capsys.readouterr().err
    assert (tmp_path / "repo" / "baseline" / "1").is_dir() == (status == 0)


def test_a_run_gives_the_process_its_standard_streams_back(tmp_path, capsys):
    """After main() returned, sys.stdout was still fmnist-train's wrapper of it, for the rest
    of the process (a job's thread, a notebook): a later reader that stopped went unsaid."""
    import sys
    import threading

    before = sys.stdout, sys.stderr
    worker = threading.Thread(target=main, args=(
        ["--out", str(tmp_path / "repo"), "--models", "baseline", "--train-subset", "5"],))
    worker.start()
    worker.join(timeout=120)
    assert (sys.stdout, sys.stderr) == before
    assert main(["--out", str(tmp_path / "repo"), "--models", "baseline", "--train-subset",
                 "5"]) == 1
    assert (sys.stdout, sys.stderr) == before
