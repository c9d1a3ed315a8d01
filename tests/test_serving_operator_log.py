"""What an operator reads of ``fmnist-serve`` (the real command, a process of its own) when
a stop signal comes early: still importing its modules, before it has handlers of its own."""

import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import held_port
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
# ``fmnist-serve`` as pip installs it from pyproject.toml (the venv's own script may predate a
# change there): the entry point's function, imported and run; and ``python -m serving``
PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
MODULE, FUNCTION = PYPROJECT["project"]["scripts"]["fmnist-serve"].split(":")
COMMANDS = {"fmnist-serve": ["-c", f"import sys; from {MODULE} import {FUNCTION}; "
                             f"sys.exit({FUNCTION}())"], "python -m serving": ["-m", "serving"]}


# The command, and where its start-up is held: as it imports the server's command-line module
# (before main() runs), as one process imports the server (grpc, onnxruntime: the long part),
# as a supervisor imports its own module
@pytest.mark.parametrize(("number", "workers", "held"), [
    (signal.SIGTERM, "1", ("fmnist-serve", "serving.cli")),
    (signal.SIGINT, "1", ("python -m serving", "serving.cli")),
    (signal.SIGHUP, "2", ("fmnist-serve", "serving.cli")),
    (signal.SIGTERM, "1", ("fmnist-serve", "serving.server")),
    (signal.SIGINT, "1", ("fmnist-serve", "serving.server")),
    (signal.SIGHUP, "1", ("fmnist-serve", "serving.server")),
    (signal.SIGTERM, "2", ("fmnist-serve", "serving.workers"))])
def test_a_stop_signal_early_in_the_start_up_is_one_line_and_exit_0(
        model_repository, tmp_path, number, workers, held):
    """It ended the process on the spot with no line (SIGTERM, SIGHUP: killed by it) or
    exited 130 (SIGINT): it now says so in the line a signal while serving gets, and exits 0.
    Held as the command-line module itself loaded (the stop signals were blocked only once
    its main() ran), it still did so."""
    command, hold_at = held
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    env = {**os.environ, "HOLD_AT": hold_at, "HOLD_FIFO": str(fifo),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, *COMMANDS[command], "--model-repository",
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



def test_a_metrics_port_taken_as_the_supervisor_binds_it_is_named_host_and_port(
        model_repository, tmp_path):
    """Free when the supervisor checked its ports, taken before it bound it (by another
    program, in between): its line said "on port N" where every other taken port says
    HOST:PORT. Held as the supervisor first imports prometheus_client (to bind it)."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    port = held_port()
    env = {**os.environ, "HOLD_AT": "prometheus_client", "HOLD_FIFO": str(fifo),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", str(model_repository),
         "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--metrics-port", str(port),
         "--workers", "2"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        with held_in_read(fifo):
            taken = socket.create_server(("127.0.0.1", port))
        with taken:
            log = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, log.splitlines()) == (1, [
        f"fmnist-serve: error: cannot listen for metrics on 127.0.0.1:{port}: "
        "[Errno 98] Address already in use"]), log
