"""What ``fmnist`` writes where: on stdout the results a script reads, and nothing else."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("argv", "setting", "status"), [
    (["health", "--target", "127.0.0.1:9", "--timeout", "2"], "", 1),  # an error
    (["classify"], "", 2),  # a usage error
    (["health"], "FMNIST_TIMEOUT=soon", 2),  # a bad env var
    (["health"], "FMNIST_TIMEOUTS=5", 0),  # a warning, and the answer
])
def test_with_stderr_closed_nothing_but_the_results_goes_to_stdout(target, argv, setting,
                                                                   status):
    """`fmnist health 2>&-` (a job that closes stderr) printed its error or warning on stdout,
    among the results a script reads: Python's print to a None stderr writes to stdout."""
    environ = {**os.environ, "FMNIST_TARGET": target, **dict([setting.split("=")] * bool(setting))}
    result = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m",
                             "serving.client", *argv], env=environ, capture_output=True,
                            text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (status, "SERVING\n" if status == 0 else "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux's full disk)")
@pytest.mark.parametrize("argv", [["models"], ["health"], ["classify", "--test-index", "0"],
                                  ["score", "--limit", "10", "--no-progress"]])
def test_a_stdout_that_cannot_be_written_is_named(target, argv):
    """`fmnist models > /dev/full` (or a full disk under `> file`) said "fmnist models: error:
    [Errno 28] No space left on device", naming nothing, where --csv's failure names its flag."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "serving.client", *argv, "--target",
                                 target], stdout=full, stderr=subprocess.PIPE, text=True,
                                timeout=60, check=False)
    assert (result.returncode, result.stderr) == (
        1, f"fmnist {argv[0]}: error: stdout: No space left on device\n")


@pytest.mark.parametrize("argv", [["models"], ["classify", "--test-index", "0", "1"]])
def test_a_reader_that_stopped_is_no_error(target, argv):
    """`fmnist models | true` (or `| head -1`): quiet, exit 0, as other command-line tools."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    with os.fdopen(write, "wb") as stopped:
        result = subprocess.run([sys.executable, "-m", "serving.client", *argv, "--target",
                                 target], stdout=stopped, stderr=subprocess.PIPE, text=True,
                                timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")
