"""What an operator reads of ``fmnist-serve`` (the real command, a process of its own) when
a stop signal comes early: still importing its modules, before it has handlers of its own."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import STOP_SIGNALS
from tests.server_process import held_in_read

# Put first on the server's PYTHONPATH: Python runs it as it starts (site), and it holds the
# start-up at the import of $HOLD_AT in a read() of the FIFO $HOLD_FIFO until the test lets go:
# the signal lands there for sure, where a sleep of a lucky length would guess.
SITECUSTOMIZE = """
import importlib.abc, os, sys

class Hold(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["HOLD_AT"]:
            sys.meta_path.remove(self)
            with open(os.environ["HOLD_FIFO"]) as fifo:
                fifo.read()
        return None

sys.meta_path.insert(0, Hold())
"""
# where the start-up is held: as one process imports the server (grpc, onnxruntime: the long
# part), as a supervisor imports its own module
HOLD_AT = {"1": "serving.server", "2": "serving.workers"}


@pytest.mark.parametrize(("number", "workers"), [
    (signal.SIGTERM, "1"), (signal.SIGINT, "1"), (signal.SIGHUP, "1"), (signal.SIGTERM, "2")])
def test_a_stop_signal_early_in_the_start_up_is_one_line_and_exit_0(
        model_repository, tmp_path, number, workers):
    """It ended the process on the spot with no line (SIGTERM, SIGHUP: killed by it) or
    exited 130 (SIGINT): it now says so in the line a signal while serving gets, and exits 0."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    env = {**os.environ, "HOLD_AT": HOLD_AT[workers], "HOLD_FIFO": str(fifo),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [Path(sys.executable).parent / "fmnist-serve", "--model-repository",
         str(model_repository), "--host", "127.0.0.1", "--port", "0", "--workers", workers,
         "--poll-interval", "0", "--grace-period", "1"],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        with held_in_read(fifo):
            process.send_signal(number)
        log = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log
    said = [line for line in log.splitlines() if "shutdown requested" in line]
    assert len(said) == 1, log
    assert f"shutdown requested signal={number.name}" in said[0], log
    assert "Traceback" not in log, log


def test_main_gives_an_in_process_caller_its_signal_mask_back_when_it_cannot_serve(
        model_repository, restore_logging):
    """main() holds the stop signals once its flags are parsed: one that cannot serve (bad
    flags, argparse's exit, a taken port) left them blocked in its caller, whose Ctrl-C,
    SIGTERM and children then waited for nothing."""
    from serving import cli

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        for argv, status in ((["--workers", "none"], 2), (
                ["--model-repository", str(model_repository), "--host", "127.0.0.1",
                 "--port", port, "--workers", "1"], 1)):
            assert cli.main(argv) == status
            assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & set(STOP_SIGNALS), argv
    for argv in (["--bogus"], ["--help"]):  # argparse's exit: they stayed blocked
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & set(STOP_SIGNALS), argv
