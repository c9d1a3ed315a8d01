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
