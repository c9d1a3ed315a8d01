"""``--host ::``, every interface in IPv6 and IPv4 (an IPv6 or dual-stack cluster's pod
address, and kubelet's probes): every port the server opens answers on both, as with
``--host 0.0.0.0`` over IPv4. (With a metrics port the server did not start: "cannot listen
for metrics ... Address family for hostname not supported"; HTTP answered over IPv6 only.)"""

import socket
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port
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
    http_port, metrics_port = free_port(), free_port()
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
    settings = http_settings(model_repository, host="localhost", metrics_port=free_port())
    with http_server(settings) as (server, _url):
        assert _get("127.0.0.1", server.http_port, "/v2/health/ready") == 200
        assert _get("127.0.0.1", settings.metrics_port, "/metrics") == 200
