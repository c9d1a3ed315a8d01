"""deploy/nginx-lb.sh, the compose `lb` image's entry point, run as a container runs it: the
process 1 of a PID namespace of its own (the kernel gives process 1 only the signals it
handles), with a `getent` on PATH standing for compose's DNS."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "nginx-lb.sh"


def _process_one(outer: int, timeout: float = 10.0) -> int:
    """The pid, seen from here, of the child that ``unshare --fork`` (pid ``outer``) made."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{outer}/task/{outer}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no process")


@pytest.mark.parametrize("stop", [signal.SIGQUIT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_while_no_replica_resolves_ends_it_at_once(tmp_path, stop):
    """Until `classifier` resolved (no replica yet, or none left when the lb restarts) the
    script trapped no signal: as process 1 it ignored `docker compose stop`'s SIGQUIT and
    SIGTERM, which waited its 10 s and killed it (exit 137)."""
    getent = tmp_path / "getent"
    getent.write_text("#!/bin/sh\nexit 2\n")  # getent's status for a name that does not resolve
    getent.chmod(0o755)
    # SIGINT and SIGQUIT not ignored, as under docker (a shell's background job ignores them,
    # and sh cannot trap a signal ignored when it started)
    namespace = ["env", "--default-signal=INT,QUIT", "unshare", "--user", "--map-root-user",
                 "--pid", "--fork", "--kill-child"]
    if subprocess.run([*namespace, "true"], check=False, capture_output=True).returncode:
        pytest.skip("env --default-signal or unshare --user --pid cannot run here")
    outer = subprocess.Popen(
        [*namespace, "sh", str(SCRIPT)], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    try:
        first = outer.stderr.readline()
        assert "waiting for the service classifier to resolve" in first, first
        os.kill(_process_one(outer.pid), stop)
        assert outer.wait(5) == 0
    finally:
        outer.kill()
        outer.wait()
