"""Health needs no token nor, on --health-port, a certificate: what anyone may keep open there
is bounded."""

import threading
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


def test_a_watch_whose_client_reads_nothing_holds_up_neither_checks_nor_the_drain(
        model_repository, grpc_server):
    """grpc_health sends a Watch's answers under the servicer's lock, on the caller's thread:
    one client, no token needed, that let no byte of its Watch in (a flow-control window of 0)
    held that lock for good. Every Check then waited for it (probes timed out, and each held a
    call thread until none was left), and so did SIGTERM's drain: the server never stopped."""
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              grpc_server=grpc_server, auth_token="s3cret")
    reads_nothing = [("grpc.http2.lookahead_bytes", 0), ("grpc.http2.bdp_probe", 0)]
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}", reads_nothing) as stalled,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as probes):
        watch = health_pb2_grpc.HealthStub(stalled).Watch(WATCH, timeout=60)  # never read
        try:
            deadline = time.monotonic() + 10  # until it is registered (the old code: never)
            while (not any(server.health._send_response_callbacks.values())
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            assert health_pb2_grpc.HealthStub(probes).Check(WATCH, timeout=5).status == SERVING
            stopping = threading.Thread(target=server.stop, args=(0.5,))
            stopping.start()
            stopping.join(30)
            assert not stopping.is_alive(), "the drain waited for the Watch"
        finally:
            watch.cancel()  # (what let the old code's stop end)


def test_watches_opened_behind_one_whose_client_reads_nothing_are_bounded(
        model_repository, grpc_server, monkeypatch):
    """The Watches' answers wait behind a client that lets no byte of its Watch in, and each
    Watch opened and closed meanwhile left two queued (its answer, its end) until that client
    went: 10,000 of them, 20,000 sends held, the server growing with each, no token needed
    (MAX_WATCHES bounds only those open). Past MAX_WATCHES queued, a Watch is refused."""
    monkeypatch.setattr(grpc_transport, "MAX_WATCHES", 3)
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              grpc_server=grpc_server)
    reads_nothing = [("grpc.http2.lookahead_bytes", 0), ("grpc.http2.bdp_probe", 0)]
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}", reads_nothing) as stalled,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as clients):

        def until_open(count: int, watch=None) -> None:
            deadline = time.monotonic() + 10
            while (sum(map(len, server.health._send_response_callbacks.values())) != count
                   and not (watch and watch.done())):  # (refused: never registered)
                assert time.monotonic() < deadline, f"{count} Watches never open"
                time.sleep(0.01)

        stalled_watch = health_pb2_grpc.HealthStub(stalled).Watch(WATCH, timeout=60)
        try:
            until_open(1)
            codes = []
            for _ in range(8):
                watch = health_pb2_grpc.HealthStub(clients).Watch(WATCH, timeout=30)
                until_open(2, watch)
                watch.cancel()
                until_open(1)
                codes.append(watch.code())
        finally:
            stalled_watch.cancel()
    assert codes[0] == grpc.StatusCode.CANCELLED  # taken, then left by its client
    assert codes[-3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, codes
