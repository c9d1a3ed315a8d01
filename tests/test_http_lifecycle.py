"""The HTTP transport's stop: readiness turns false before calls are refused (and gRPC's with
it), the port is let go, and a client stalled mid-request is left behind after the grace."""

import contextlib
import socket
import threading
import time

import grpc
import pytest
import requests

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving import server as server_module
from tests.http_helpers import http_server, http_settings, wait_until_reading_bodies


def test_ready_turns_400_when_the_server_drains_before_calls_are_refused(model_repository,
                                                                         monkeypatch):
    """SIGTERM's order over HTTP: /v2/health/ready says 400 first (the protocol's "4xx is
    false"), then calls are refused 503 (health stays live); meanwhile gRPC's ServerReady
    says false, as HTTP does."""
    monkeypatch.setattr(server_module, "HEALTH_NOTICE_SECONDS", 1.0)  # room to ask gRPC
    with (http_server(http_settings(model_repository, grace_period=3.0)) as (server, url),
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        inference = pb_grpc.GRPCInferenceServiceStub(channel)
        assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        assert inference.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        events = []
        deadline = time.monotonic() + 5
        while "call refused" not in events and time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):  # a call first: were both
                if requests.get(f"{url}/v1/models", timeout=5).status_code == 503:  # to turn
                    events.append("call refused")  # at once, this would see it first
                ready = requests.get(f"{url}/v2/health/ready", timeout=5).status_code
                if ready == 400 and "not ready" not in events:
                    events.append("not ready")
                    events.append(f"gRPC ready: {_grpc_ready(inference)}")
        stopping.join(10)
    assert events == ["not ready", "gRPC ready: False", "call refused"]


def test_model_ready_is_unavailable_from_the_drains_first_moment(model_repository, monkeypatch,
                                                                 grpc_server):
    """While ServerReady said false (the drain's notice to balancers), ModelReady still said
    true (HTTP 200), then UNAVAILABLE once calls were refused: two answers, the first wrong.
    As Triton's ("Server not ready", UNAVAILABLE), it is UNAVAILABLE (HTTP 503) from the
    drain's start, on both transports, which a client's retry policy takes to a ready
    replica."""
    # calls still admitted for 5 s: the checks below, milliseconds, fall within it
    monkeypatch.setattr(server_module, "HEALTH_NOTICE_SECONDS", 5.0)
    with (http_server(http_settings(model_repository, grace_period=3.0,
                                    grpc_server=grpc_server)) as (server, url),
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        inference = pb_grpc.GRPCInferenceServiceStub(channel)
        assert inference.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=5).ready
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        deadline = time.monotonic() + 5
        while _grpc_ready(inference):  # the drain's first moment
            assert time.monotonic() < deadline, "ServerReady still true 5 s into the stop"
            time.sleep(0.005)
        with pytest.raises(grpc.RpcError) as refused:
            inference.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=5)
        answer = requests.get(f"{url}/v2/models/mlp/ready", timeout=5)
        assert server.admission.accepting  # still the notice, before calls are refused
        stopping.join(30)
    assert (refused.value.code(), answer.status_code) == (grpc.StatusCode.UNAVAILABLE, 503)
    assert "shutting down" in refused.value.details() and "shutting down" in answer.text


def test_a_stopped_server_has_let_go_of_its_http_port(model_repository):
    """granian stops on its own threads: stop() returned while they still held the port and,
    in a one-process server, while they could still call into an interpreter that was being
    finalized (a fresh-clone CI run saw granian abort the process at exit: 'panic in a
    function that cannot unwind')."""
    settings = http_settings(model_repository)
    for _ in range(5):
        with http_server(settings) as (server, url):
            assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
            server.http.stop(grace_s=1.0)  # as the server's own stop() calls it
            socket.create_server(("127.0.0.1", settings.http_port)).close()  # OSError: held


def test_a_client_stalled_mid_request_is_left_behind_after_the_grace(model_repository, caplog):
    """granian cannot stop while a request is half sent (it has no body timeout): stop()
    waits the grace and a second more for it, then says so and returns (it waited for as long
    as the client stayed: here, 30 s, twenty times what it waits, stand for "for ever")."""
    settings = http_settings(model_repository)
    with http_server(settings) as (server, _url), socket.create_connection(
            ("127.0.0.1", settings.http_port)) as stalled:
        stalled.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        wait_until_reading_bodies(server.http_port, 1)  # before admission: uncounted
        began = time.monotonic()
        stopping = threading.Thread(target=server.http.stop, args=(0.5,), daemon=True)
        stopping.start()
        stopping.join(30)
        assert not stopping.is_alive(), "stop() waits for the stalled client"
        assert time.monotonic() - began > 1.4  # it gave the request the grace and a second
    assert "an HTTP connection is still in the middle of a request; left behind" in [
        record.getMessage() for record in caplog.records]


def test_clients_stalled_mid_body_hold_no_place_under_the_concurrency_limit(model_repository):
    """Two connections that send their headers and one byte of the body, then nothing: the
    body was read once the call was admitted, so they held both places of
    --max-concurrent-calls 2 for as long as they stayed, and every other call, gRPC's too,
    was refused (429, RESOURCE_EXHAUSTED). The body is read before the call is counted."""
    settings = http_settings(model_repository, max_concurrent_calls=2)
    with (http_server(settings) as (server, url), contextlib.ExitStack() as stalled,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        for _ in range(2):
            stalled.enter_context(socket.create_connection(("127.0.0.1", settings.http_port))
                                  ).sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Length: 1000\r\n\r\n{")
        wait_until_reading_bodies(server.http_port, 2)  # both in the app, waiting for the rest
        assert requests.get(f"{url}/v1/models", timeout=5).status_code == 200
        inference = pb_grpc.GRPCInferenceServiceStub(channel)
        assert inference.ServerMetadata(pb.ServerMetadataRequest(), timeout=5).name


def _grpc_ready(inference) -> bool:
    return inference.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
