"""``--host ::``, every interface in IPv6 and IPv4 (an IPv6 or dual-stack cluster's pod
address, and kubelet's probes): every port the server opens answers on both, as with
``--host 0.0.0.0`` over IPv4. (With a metrics port the server did not start: "cannot listen
for metrics ... Address family for hostname not supported"; HTTP answered over IPv6 only.)"""

import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import held_port
from tests.http_helpers import http_server, http_settings
from tests.server_process import server_process


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
# A network namespace of its own (loopback only): a server there may listen on every
# interface, and the test's client joins it with nsenter.
PRIVATE_NETWORK = ("unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")
# ... with IPv6 turned off (as Docker does in a container on a network without IPv6), or
# with net.ipv6.bindv6only set (a socket on :: takes no IPv4 unless it asks to)
IPV6_OFF = ("unshare", "--net", "sh", "-c", "ip link set lo up && for c in all default lo; do "
            'echo 1 >/proc/sys/net/ipv6/conf/$c/disable_ipv6; done && exec "$@"', "sh")
BINDV6ONLY = ("unshare", "--net", "sh", "-c", "ip link set lo up && "
              'echo 1 >/proc/sys/net/ipv6/bindv6only && exec "$@"', "sh")


def _can_make_private_networks() -> bool:
    """Root in a container (Docker's defaults) lacks CAP_SYS_ADMIN and a writable /proc/sys:
    unshare fails there ("Operation not permitted"), and each test with it after 30 s."""
    return all(subprocess.run([*prefix, "true"], capture_output=True, timeout=30,
                              check=False).returncode == 0 for prefix in (IPV6_OFF, BINDV6ONLY))


needs_private_network = pytest.mark.skipif(
    os.geteuid() != 0 or not all(map(shutil.which, ("unshare", "nsenter", "ip")))
    or not socket.has_dualstack_ipv6() or not _can_make_private_networks(),
    reason="needs root that may unshare (CAP_SYS_ADMIN), nsenter, ip and IPv6")


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=10).status


def _get(host: str, port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as answer:
        return answer.status


@needs_ipv6
@pytest.mark.parametrize("workers", [1, 2])
def test_every_port_answers_over_ipv6_and_ipv4(model_repository, workers):
    http_port, metrics_port = held_port(), held_port()
    with server_process(model_repository, "--host", "::", "--workers", str(workers),
                        "--http-port", str(http_port), "--metrics-port", str(metrics_port),
                        "--poll-interval", "0") as (process, logs):
        logs.wait_for("workers serving" if workers > 1 else "serving", timeout=30)
        port = logs.wait_for("serving")[0]["address"].rsplit(":", 1)[1]
        for host in ("127.0.0.1", "[::1]"):
            assert _health(f"{host}:{port}") == health_pb2.HealthCheckResponse.SERVING
            assert _get(host, http_port, "/v2/health/ready") == 200
            assert _get(host, metrics_port, "/metrics") == 200
        assert process.poll() is None


def test_a_host_name_resolving_to_ipv6_first_is_served_over_ipv4(model_repository, monkeypatch):
    """``--host localhost`` where localhost is ::1 first, then 127.0.0.1 (/etc/hosts of
    Debian's images): gRPC listens on both; the HTTP and metrics ports took the first address
    only, ::1, so a probe or scrape of 127.0.0.1 was refused (metrics answered there before
    it followed the address family). A name of both families is served over IPv4."""
    resolve = socket.getaddrinfo

    def ipv6_first(host, port, *args, **kwargs):
        if host != "localhost":
            return resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", ipv6_first)
    settings = http_settings(model_repository, host="localhost", metrics_port=held_port())
    with http_server(settings) as (server, _url):
        assert _get("127.0.0.1", server.http_port, "/v2/health/ready") == 200
        assert _get("127.0.0.1", settings.metrics_port, "/metrics") == 200


@needs_private_network
@pytest.mark.parametrize(("workers", "network"), [
    (1, PRIVATE_NETWORK), (2, PRIVATE_NETWORK), (2, IPV6_OFF), (1, BINDV6ONLY), (2, BINDV6ONLY)],
    ids=["ipv6-1", "ipv6-2", "ipv6-off-2", "bindv6only-1", "bindv6only-2"])
def test_every_port_of_a_server_on_0_0_0_0_answers_over_ipv6_too(model_repository, workers,
                                                                  network):
    """``--host 0.0.0.0``, the image's and every manifest's: on an IPv6 (or IPv6-first
    dual-stack) cluster the pod's address, which probes, Services and Prometheus reach, is
    IPv6. gRPC's port listened on both families there (gRPC's wildcard); the HTTP and
    metrics ports on IPv4 only: the pod turned ready while its REST API and its metrics were
    refused. Where IPv6 is turned off, every port still answers over IPv4, and where
    net.ipv6.bindv6only is set, over both."""
    hosts = ("127.0.0.1",) if network == IPV6_OFF else ("127.0.0.1", "[::1]")
    with server_process(model_repository, "--host", "0.0.0.0", "--workers", str(workers),
                        "--http-port", "8080", "--metrics-port", "9090", "--poll-interval", "0",
                        prefix=network) as (process, logs):
        logs.wait_for("workers serving" if workers > 1 else "serving", timeout=30)
        port = logs.wait_for("serving")[0]["address"].rsplit(":", 1)[1]
        client = f"""
import sys, grpc, urllib.request
from grpc_health.v1 import health_pb2, health_pb2_grpc
for host in {hosts!r}:
    with grpc.insecure_channel(f"{{host}}:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10).status
    print(host, "grpc", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    for port, path in ((8080, "/v2/health/ready"), (9090, "/metrics")):
        try:
            with urllib.request.urlopen(f"http://{{host}}:{{port}}{{path}}", timeout=10) as answer:
                print(host, port, answer.status)
        except OSError as error:
            print(host, port, error)
"""
        answers = subprocess.run(
            ["nsenter", f"--net=/proc/{process.pid}/ns/net", sys.executable, "-c", client],
            check=False, capture_output=True, text=True, timeout=60)
        assert answers.returncode == 0, answers.stderr
        assert answers.stdout.splitlines() == [
            f"{host} {what}" for host in hosts
            for what in ("grpc SERVING", "8080 200", "9090 200")]
        assert process.poll() is None


@needs_private_network
def test_an_ipv4_client_of_a_server_on_0_0_0_0_is_logged_by_its_ipv4_address(model_repository):
    """HTTP on 0.0.0.0 listens on "::" where there is IPv6: an IPv4 client's failed request was
    logged with peer "::ffff:127.0.0.1" (gRPC's log says ipv4:127.0.0.1:PORT), so a search of
    the logs for a client's address missed its HTTP requests."""
    with server_process(model_repository, "--host", "0.0.0.0", "--http-port", "8080",
                        "--poll-interval", "0", prefix=PRIVATE_NETWORK) as (process, logs):
        logs.wait_for("serving", timeout=30)
        client = """
import urllib.error, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:8080/v2/models/mlp/infer", b"{oops", timeout=10)
except urllib.error.HTTPError as error:
    print(error.code)
"""
        answer = subprocess.run(
            ["nsenter", f"--net=/proc/{process.pid}/ns/net", sys.executable, "-c", client],
            check=False, capture_output=True, text=True, timeout=60)
        assert answer.stdout == "400\n", answer.stderr
        assert logs.wait_for("request failed")[0]["peer"] == "ipv4:127.0.0.1"


def test_http_and_metrics_listen_where_one_function_says():
    """0.0.0.0 as gRPC's port takes it (IPv6 too, dual-stack, where there is IPv6) and a name
    of both families as IPv4 was written twice, for HTTP and for metrics, which could drift
    apart: one function says it for both."""
    from serving.settings import listening_address

    everywhere = ((socket.AF_INET6, "::") if socket.has_dualstack_ipv6()
                  else (socket.AF_INET, "0.0.0.0"))
    assert listening_address("0.0.0.0", 0) == everywhere
    assert listening_address("127.0.0.1", 0) == (socket.AF_INET, "127.0.0.1")
    assert listening_address("localhost", 0) == (socket.AF_INET, "localhost")  # IPv4 first
    if _has_ipv6_loopback():
        assert listening_address("::1", 0) == (socket.AF_INET6, "::1")
