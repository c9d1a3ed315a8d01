"""deploy/nginx-lb.sh, the compose `lb` image's entry point, run as a container runs it: the
process 1 of a PID namespace of its own (the kernel gives process 1 only the signals it
handles), with a `getent` on PATH standing for compose's DNS."""

import os
import signal
import subprocess
import sys
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


# A DNS server for the test's network namespace: `classifier.evil.test` (the name a search
# domain makes of `classifier`) is a host outside; `classifier` a replica, given "replica";
# every other name does not exist.
_DNS = r"""
import socket, struct, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    query, peer = sock.recvfrom(512)
    end, labels = 12, []
    while query[end]:
        labels.append(query[end + 1:end + 1 + query[end]].decode().lower())
        end += 1 + query[end]
    question = query[12:end + 5]
    names = {"classifier.evil.test": 9, "classifier": 7 if sys.argv[1:] == ["replica"] else 0}
    host = names.get(".".join(labels), 0) if query[end + 1:end + 3] == b"\0\1" else 0
    found = host > 0
    header = query[:2] + struct.pack(">HHHHH", 0x8180 if found else 0x8183, 1, int(found), 0, 0)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([203, 0, 113, host])
    sock.sendto(header + question + (answer if found else b""), peer)
"""


@pytest.mark.parametrize("replica", ["", "replica"], ids=["no replica", "a replica"])
def test_a_search_domain_never_gives_the_upstreams_an_outside_host(tmp_path, replica):
    """While no replica of `classifier` runs (stopped, or being recreated), compose's DNS says
    the name does not exist, and the resolver then tries it under the host's search domains
    (which containers inherit): where `classifier.<domain>` exists (a wildcard record, a LAN
    host of that name), the lb rewrote its upstreams to that outside host within 2 s and sent
    it every call, bearer tokens and images, until a replica came back. The name is asked for
    as it is, never under a search domain."""
    (tmp_path / "resolv.conf").write_text(
        "nameserver 127.0.0.1\nsearch evil.test\noptions ndots:0 timeout:1 attempts:1\n")
    (tmp_path / "nginx").write_text("#!/bin/sh\nexec sleep 30\n")  # nginx's stand-in
    (tmp_path / "nginx").chmod(0o755)
    (tmp_path / "dns.py").write_text(_DNS)
    inner = (f"mount --bind {tmp_path}/resolv.conf /etc/resolv.conf && ip link set lo up && "
             # an address past loopback: getaddrinfo asks no DNS without one (AI_ADDRCONFIG)
             "ip addr add 10.9.9.9/32 dev lo && "
             f"mount -t tmpfs none /mnt && cp {tmp_path}/nginx {tmp_path}/dns.py {SCRIPT} /mnt && "
             f"{{ {sys.executable} /mnt/dns.py {replica} >/dev/null 2>&1 & }} && sleep 1 && "
             # the script's own /tmp, as the image's tmpfs; this checkout and its Python may be
             # under /tmp too, hence the copies in /mnt and the stub DNS started before
             "mount -t tmpfs none /tmp && "
             f"PATH=/mnt:$PATH timeout -k 1 4 sh /mnt/{SCRIPT.name} </dev/null >/dev/null; "
             "cat /tmp/nginx-upstreams.conf 2>/dev/null; true")
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--fork",
                 "--kill-child"]
    if subprocess.run([*namespace, "sh", "-c", "ip link set lo up"], check=False,
                      capture_output=True).returncode:
        pytest.skip("unshare --user --mount --net cannot run here")
    done = subprocess.run([*namespace, "sh", "-c", inner], capture_output=True, text=True,
                          timeout=30, check=False)
    assert "203.0.113.9" not in done.stdout, done.stdout
    if replica:  # its own address, as compose's DNS gives it
        assert "server 203.0.113.7:50051;" in done.stdout, (done.stdout, done.stderr)
    else:
        assert "waiting for the service classifier to resolve" in done.stderr, done.stderr
