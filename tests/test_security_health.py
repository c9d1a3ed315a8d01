"""Health needs no token nor, on --health-port, a certificate: what anyone may keep open there
is bounded."""

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import grpc_transport
from tests.conftest import held_port, local_settings, running_server

SERVING = health_pb2.HealthCheckResponse.SERVING
WATCH = health_pb2.HealthCheckRequest(service="")


def test_health_watches_past_the_most_kept_are_refused_while_checks_answer(
        model_repository, grpc_server, monkeypatch):
    """Each Watch held ~15 KB until its client left, with no bound: without a token or a
    certificate, 5,000 Watches on one connection grew the server by 76 MB."""
    monkeypatch.setattr(grpc_transport, "MAX_WATCHES", 3)
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              grpc_server=grpc_server, auth_token="s3cret",
                              health_port=held_port())
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as probes,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as clients):
        health = health_pb2_grpc.HealthStub(probes)
        watches = [health.Watch(WATCH, timeout=30) for _ in range(3)]
        assert [next(watch).status for watch in watches] == [SERVING] * 3
        for channel in (probes, clients):  # one bound over both ports
            refused = health_pb2_grpc.HealthStub(channel).Watch(WATCH, timeout=5)
            try:
                next(refused)
                raise AssertionError("a Watch past the most kept was answered")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert "3 health Watches open" in error.details()
            assert health_pb2_grpc.HealthStub(channel).Check(WATCH, timeout=5).status == SERVING
        watches.pop().cancel()
        deadline = time.monotonic() + 5  # its end is handled on a thread of its own
        while time.monotonic() < deadline:
            try:
                assert next(health.Watch(WATCH, timeout=30)).status == SERVING
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                time.sleep(0.05)
        else:
            raise AssertionError("a Watch's place was not freed when its client left")
