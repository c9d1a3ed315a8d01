"""common.output's wrapper of a command's standard output, in a process that goes on after the
command's ``main()`` returns (a job, a notebook): its file descriptor 1 is its own again."""

import json
import os
import subprocess
import sys

import pytest

CALLER = """
import json, os, sys
from {module} import main
before = os.fstat(1)
try:
    main({argv})
except SystemExit:
    pass
after = os.fstat(1)
print(json.dumps([[s.st_dev, s.st_ino, s.st_rdev] for s in (before, after)]), file=sys.stderr)
"""


@pytest.mark.parametrize("module", ["serving.client.cli", "training.cli"])
@pytest.mark.parametrize("stdout", ["full", "stopped"])
def test_a_failed_write_leaves_the_callers_stdout_its_own(module, stdout):
    """After a write failed (`> /dev/full`, or a reader that stopped: `| head -1`), the wrapper
    pointed the process's descriptor 1 at /dev/null and left it so after main() returned: all
    the caller printed then was lost without a word (to a full disk it would be refused)."""
    if stdout == "full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full (Linux's full disk)")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    with os.fdopen(write, "wb") as pipe, open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-c", CALLER.format(module=module,
                                                                     argv=["--help"])],
                                stdout=full if stdout == "full" else pipe,
                                stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stderr.splitlines()[-1])
    assert after == before, result.stderr


def test_a_reader_that_stopped_leaves_the_callers_stdout_its_own(target):
    """`fmnist models` into a reader that stopped is no error (exit 0, quiet), but pointed the
    caller's descriptor 1 at /dev/null, after the wrapper had given it back."""
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "wb") as pipe:
        result = subprocess.run([sys.executable, "-c", CALLER.format(
            module="serving.client.cli", argv=["models", "--target", target])], stdout=pipe,
            stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stderr)
    assert after == before, result.stderr
