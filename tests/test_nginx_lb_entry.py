"""deploy/nginx-lb.sh, the compose `lb` image's entry point, run as a container runs it: the
process 1 of a PID namespace of its own (the kernel gives process 1 only the signals it
handles), with compose's DNS played by a stub on PATH or a DNS server of the test's."""

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
    resolver = tmp_path / "python3"  # the script's resolver: status 2, no such name
    resolver.write_text("#!/bin/sh\nexit 2\n")
    resolver.chmod(0o755)
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
# domain makes of `classifier`) is a host outside; `classifier` a replica, given "replica", or
# that host outside, given "outside"; every other name does not exist.
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
    names = {"classifier.evil.test": 9,
             "classifier": {"replica": 7, "outside": 9}.get("".join(sys.argv[1:]), 0)}
    host = names.get(".".join(labels), 0) if query[end + 1:end + 3] == b"\0\1" else 0
    found = host > 0
    header = query[:2] + struct.pack(">HHHHH", 0x8180 if found else 0x8183, 1, int(found), 0, 0)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([203, 0, 113, host])
    sock.sendto(header + question + (answer if found else b""), peer)
"""


@pytest.mark.parametrize("replica", ["", "replica", "outside"],
                         ids=["no replica", "a replica", "an outside host"])
def test_a_search_domain_never_gives_the_upstreams_an_outside_host(tmp_path, replica):
    """While no replica of `classifier` runs (stopped, or being recreated), compose's DNS says
    the name does not exist, and the resolver then tries it under the host's search domains
    (which containers inherit): where `classifier.<domain>` exists (a wildcard record, a LAN
    host of that name), the lb rewrote its upstreams to that outside host within 2 s and sent
    it every call, bearer tokens and images, until a replica came back. The name is asked for
    as it is, never under a search domain. And Docker's DNS, which knows no `classifier` then,
    asks the host's resolvers for it (a LAN's router knows its hosts by bare name): an address
    on no network of the container (a replica is on compose's) is no replica either."""
    (tmp_path / "resolv.conf").write_text(
        "nameserver 127.0.0.1\nsearch evil.test\noptions ndots:0 timeout:1 attempts:1\n")
    (tmp_path / "nginx").write_text("#!/bin/sh\nexec sleep 30\n")  # nginx's stand-in
    (tmp_path / "nginx").chmod(0o755)
    (tmp_path / "dns.py").write_text(_DNS)
    inner = (f"mount --bind {tmp_path}/resolv.conf /etc/resolv.conf && ip link set lo up && "
             # an address past loopback: getaddrinfo asks no DNS without one (AI_ADDRCONFIG)
             "ip addr add 10.9.9.9/32 dev lo && "
             "ip route add 203.0.113.7/32 dev lo && "  # the replica's network; .9 is outside
             f"mount -t tmpfs none /mnt && cp {tmp_path}/nginx {tmp_path}/dns.py {SCRIPT} /mnt && "
             # the script's resolver (python3), wherever PATH would have found it
             f"ln -s {os.path.realpath(sys.executable)} /mnt/python3 && "
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
    if replica == "replica":  # its own address, as compose's DNS gives it
        assert "server 203.0.113.7:50051;" in done.stdout, (done.stdout, done.stderr)
    else:
        assert "waiting for the service classifier to resolve" in done.stderr, done.stderr
    if replica == "outside":
        assert ("203.0.113.9, which answered for it, is on no network of this container"
                in done.stderr), done.stderr


# A DNS server whose answers the test changes as it goes: /mnt/dns-state holds `replica` (the
# name `classifier` is 203.0.113.7), `none` (it does not exist: no replica runs) or `servfail`
# (the resolver failed, a transient DNS failure).
_STATEFUL_DNS = r"""
import socket, struct
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))
while True:
    query, peer = sock.recvfrom(512)
    end = 12
    while query[end]:
        end += 1 + query[end]
    state = open("/mnt/dns-state").read().strip()
    found = state == "replica" and query[end + 1:end + 3] == b"\0\1"
    flags = 0x8180 if found else 0x8182 if state == "servfail" else 0x8183
    header = query[:2] + struct.pack(">HHHHH", flags, 1, int(found), 0, 0)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([203, 0, 113, 7])
    sock.sendto(header + query[12:end + 5] + (answer if found else b""), peer)
"""

# Run in the namespace: one HTTP request through nginx per DNS state (STATE or STATE:SECONDS),
# after nginx-lb.sh had SECONDS (4.5: two of its looks) to see it; prints each state, status
# and seconds taken.
_CALLS = r"""
import http.client, sys, time
def call():
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
    connection.request("GET", "/v1/health")
    return connection.getresponse().status, round(time.monotonic() - started, 2)
deadline = time.monotonic() + 10
while True:
    try:
        call()
        break
    except OSError:
        assert time.monotonic() < deadline, "nginx did not listen within 10 s"
        time.sleep(0.2)
for state, _, seconds in (arg.partition(":") for arg in sys.argv[1:]):
    open("/mnt/dns-state", "w").write(state)
    time.sleep(float(seconds or 4.5))
    print(state, *call(), flush=True)
"""


def _run_with_nginx(tmp_path, calls: str, *args: str, slow_start: float = 0
                    ) -> subprocess.CompletedProcess:
    """deploy/nginx-lb.sh with Debian's nginx on nginx-grpc-lb.conf, as the process 1 of a PID
    namespace, in a network namespace whose DNS is _STATEFUL_DNS and where 203.0.113.0/24 is a
    route that drops every packet (a replica gone: a connect there waits for nginx's connect
    timeout); then ``calls`` (Python) is run there with ``args``, and $LB the pid of the
    script's parent. nginx starts ``slow_start`` seconds after the script runs it."""
    nginx = Path("/usr/sbin/nginx")
    if not nginx.exists():
        pytest.skip("no nginx (Debian's package nginx) here")
    config = SCRIPT.parent / "nginx-grpc-lb.conf"
    # root: in the user namespace no other user exists to run its workers as
    (tmp_path / "nginx.conf").write_text("user root root;\n" + config.read_text())
    (tmp_path / "nginx").write_text(
        f'#!/bin/sh\nsleep {slow_start}\nexec {nginx} -c /mnt/nginx.conf "$@"\n')
    (tmp_path / "nginx").chmod(0o755)
    (tmp_path / "dns.py").write_text(_STATEFUL_DNS)
    (tmp_path / "calls.py").write_text(calls)
    (tmp_path / "resolv.conf").write_text(
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    python = os.path.realpath(sys.executable)
    inner = (f"mount --bind {tmp_path}/resolv.conf /etc/resolv.conf && ip link set lo up && "
             # packets to 203.0.113.0/24 loop back to a host that forwards none: lost
             "ip addr add 10.9.9.9/32 dev lo && ip route add 203.0.113.0/24 dev lo && "
             f"mount -t tmpfs none /mnt && cp {tmp_path}/* {SCRIPT} /mnt && "
             f"ln -s {python} /mnt/python3 && echo replica >/mnt/dns-state && "
             f"{{ {python} /mnt/dns.py & }} && "
             # the script's own /tmp, a tmpfs as in the image, in a mount namespace of its own
             "{ PATH=/mnt:$PATH unshare --mount --pid --fork sh -c 'mount -t tmpfs none /tmp && "
             f"exec sh /mnt/{SCRIPT.name}' </dev/null 2>/mnt/lb.err & }} && "
             f"LB=$! {python} /mnt/calls.py {' '.join(args)}; status=$?; cat /mnt/lb.err >&2; "
             "exit $status")
    namespace = ["env", "--default-signal=HUP,INT,QUIT", "unshare", "--user", "--map-root-user",
                 "--mount", "--net", "--pid", "--mount-proc", "--fork", "--kill-child"]
    if subprocess.run([*namespace, "sh", "-c", "ip link set lo up"], check=False,
                      capture_output=True).returncode:
        pytest.skip("env --default-signal or unshare --user --mount --net --pid cannot run here")
    return subprocess.run([*namespace, "sh", "-c", inner], capture_output=True, text=True,
                          timeout=60, check=False)


def test_no_replica_left_fails_calls_at_once_and_a_dns_failure_keeps_them(tmp_path):
    """With every replica of `classifier` stopped (`--scale classifier=0`, `compose stop`),
    compose's DNS says the name does not exist, and the script, which could not tell that from a
    DNS failure, kept the gone addresses: each call waited nginx's 2 s connect timeout, then
    502. A name that does not exist now leaves nginx no upstream server to try (502 at once);
    a DNS failure keeps the addresses it had (a replica may be there, its calls go on)."""
    done = _run_with_nginx(tmp_path, _CALLS, "servfail", "none:7.5", "replica")
    results = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert set(results) == {"servfail", "none", "replica"}, (done.stdout, done.stderr)
    status, seconds = results["servfail"]  # the gone address kept: its connect timeout, 2 s
    assert status in ("502", "504") and float(seconds) >= 1.5, (results, done.stderr)
    status, seconds = results["none"]
    assert status == "502" and float(seconds) < 0.5, (results, done.stderr)
    assert "no replica of classifier" in done.stderr, done.stderr
    status, seconds = results["replica"]  # back: the address is tried again
    assert status in ("502", "504") and float(seconds) >= 1.5, (results, done.stderr)


def test_a_moment_of_no_such_name_keeps_the_replicas(tmp_path):
    """A DNS that says for a moment that `classifier` does not exist while replicas run
    (podman's aardvark-dns as a replica restarts; the host's resolver answering while it is
    away) left nginx no upstream server: every call 502 at once until the next look, 2 s later
    (a CI run's compose smoke test failed so). "No replica" is taken after three looks in a row
    (4 s) say so; before that the addresses stay."""
    done = _run_with_nginx(tmp_path, _CALLS, "none:0.4", "replica:3")  # none for 2.4 s
    results = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert set(results) == {"none", "replica"}, (done.stdout, done.stderr)
    assert "no replica of classifier" not in done.stderr, done.stderr
    for status, seconds in results.values():  # the address kept: its connect timeout, 2 s
        assert status in ("502", "504") and float(seconds) >= 1.5, (results, done.stderr)


# Run in the namespace: SIGHUP to the script (process 1 of its PID namespace, as in a container)
# once nginx runs, or while nginx starts (argv[1]); prints whether nginx reloaded (workers of
# its master replaced by new ones) within 6 s, or that it ended.
_RELOADS = r"""
import os, signal, sys, time
from pathlib import Path
def children(pid, name=None):
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in found
                if name is None or Path(f"/proc/{c}/comm").read_text().strip() == name]
    except OSError:  # gone meanwhile: FileNotFoundError, or ProcessLookupError (ESRCH)
        return []
def wait_for(what, timeout):
    deadline = time.monotonic() + timeout
    while not (found := what()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found
script = wait_for(lambda: children(int(os.environ["LB"])), 10)[0]
master = wait_for(lambda: children(script, "nginx"), 10)[0]
if sys.argv[1] == "starting":  # nginx not yet started, as in its first moments
    os.kill(script, signal.SIGHUP)
workers = set(wait_for(lambda: children(master, "nginx"), 10))
if sys.argv[1] == "running":
    os.kill(script, signal.SIGHUP)
replaced = wait_for(lambda: set(children(master, "nginx")) - workers or not children(script), 6)
print("nginx ended" if not children(script) else "reloaded" if replaced else "not reloaded")
"""


@pytest.mark.parametrize("when", ["running", "starting"], ids=lambda when: f"nginx {when}")
def test_a_sighup_reloads_nginx_and_never_stops_it(tmp_path, when):
    """`docker kill -s HUP lb` reloaded nginx while nginx was the container's process 1; the
    script, process 1 since, trapped no SIGHUP, so the kernel dropped it: nothing reloaded. It
    is passed on to nginx (with the replicas looked up again), but only once nginx has written
    its pid file: a SIGHUP before nginx set its signal handlers would end it (its default
    action), and the container with it."""
    done = _run_with_nginx(tmp_path, _RELOADS, when, slow_start=1 if when == "starting" else 0)
    assert done.stdout.strip() == "reloaded", (done.stdout, done.stderr)
    assert "SIGHUP: reloading nginx" in done.stderr, done.stderr
