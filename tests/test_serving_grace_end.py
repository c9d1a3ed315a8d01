"""What the drain's log and metrics say of the calls its grace period cut."""

import asyncio
import logging
import threading
import time

import grpc
import requests
from prometheus_client import REGISTRY

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc
from serving.server import ModelServer
from tests.conftest import held_port, local_settings, running_server
from tests.echo_service import SERVICE, Echo


async def test_the_stopped_line_says_how_many_calls_the_grace_period_cancelled(
        model_repository, grpc_server, caplog):
    """The drain logged "draining in_flight=1" and then "stopped", the same whether its calls
    finished or the grace period cut them (their clients: UNAVAILABLE): an operator tuning
    --grace-period could not tell. A drain with none left says 0."""
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              poll_interval=0)
    caplog.set_level(logging.INFO, logger="serving.server")
    async with running_server(settings, grace=0.3) as server, grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}") as channel:
        stream = classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream()
        await stream.write(pb.ClassifyRequest(images=[bytes(784)]))
        await stream.read()  # in flight, and held open past the grace
        async with running_server(settings, grace=0.3):  # nothing in flight
            pass
        await asyncio.to_thread(server.stop, 0.3)
        assert await stream.code() == grpc.StatusCode.UNAVAILABLE
    stopped = [getattr(record, "fields", {}) for record in caplog.records
               if record.getMessage() == "stopped"]
    assert stopped == [{"cancelled": 0}, {"cancelled": 1}]


async def test_the_calls_the_grace_period_cut_count_cancelled(model_repository, grpc_server):
    """Streams the grace cut, their clients told UNAVAILABLE, were counted OK in
    fmnist_requests_total on grpcio (8 of 8), and now and then on the native server (1 of 8),
    as the race between gRPC's two ends of a cancelled call fell: an alert on the calls that
    failed missed them."""
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              poll_interval=0)
    labels = {"api": "domain", "method": "ClassifyStream", "model": "mlp"}

    def counted() -> dict[str, float]:
        return {code: REGISTRY.get_sample_value("fmnist_requests_total", {**labels, "code": code})
                or 0.0 for code in ("OK", "CANCELLED")}

    before, streams = counted(), 8
    async with running_server(settings, grace=0.3) as server, grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}") as channel:
        calls = [classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream()
                 for _ in range(streams)]
        for call in calls:
            await call.write(pb.ClassifyRequest(images=[bytes(784)]))
            await call.read()  # in flight, and held open past the grace
        await asyncio.to_thread(server.stop, 0.3)
        after = counted()  # the stop has waited for the calls' threads, on grpcio too
        assert {await call.code() for call in calls} == {grpc.StatusCode.UNAVAILABLE}
    assert {code: after[code] - before[code] for code in after} == {"OK": 0, "CANCELLED": streams}


async def test_the_stopped_line_comes_after_the_calls_the_grace_period_cut(
        model_repository, grpc_server, caplog):
    """A call still at work when the grace period ends (here waiting out --batch-delay-us, 1 s,
    past a 0.3 s grace) is cancelled, its client told UNAVAILABLE, but its handler goes on: on
    grpcio the stop returned before it had ended, so the "stopped" line said cancelled=0 and
    the call was counted after it (or never: the process exits). Now either server's stop
    waits for it."""
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              poll_interval=0, batch_delay_us=1_000_000)
    caplog.set_level(logging.DEBUG, logger="serving")
    labels = {"api": "domain", "method": "Classify", "model": "mlp", "code": "CANCELLED"}
    before = REGISTRY.get_sample_value("fmnist_requests_total", labels) or 0.0
    async with running_server(settings, grace=0.3) as server, grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}") as channel:
        call = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            pb.ClassifyRequest(images=[bytes(784)]))
        until = time.monotonic() + 10
        while not server.admission.in_flight and time.monotonic() < until:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(server.stop, 0.3)
        assert REGISTRY.get_sample_value("fmnist_requests_total", labels) == before + 1
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
    ends = [(record.getMessage(), getattr(record, "fields", {}).get("code")) for record
            in caplog.records if record.getMessage() in ("request failed", "stopped")]
    assert ends == [("request failed", "CANCELLED"), ("stopped", None)]
    assert [record.fields for record in caplog.records
            if record.getMessage() == "stopped"] == [{"cancelled": 1}]


def test_a_handler_still_at_work_past_the_grace_is_left_behind_with_a_warning(
        model_repository, grpc_server, caplog):
    """A handler that goes on past the grace's end (and CALLS_END_SECONDS more) does not hold
    the stop: the native server's waited for it as long as it ran, for ever if it never
    returned. It is left behind, a warning says so, then "stopped"."""
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              poll_interval=0)
    caplog.set_level(logging.INFO, logger="serving.server")
    echo, server = Echo(), ModelServer.from_settings(settings)
    server._server.add_generic_rpc_handlers([echo.handler()])  # through the pipeline too
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            held = channel.unary_unary(f"/{SERVICE}/Unary").future(b"hold", timeout=30)
            assert echo.holding.wait(5)
            server.stop(0.2)
            assert server.admission.in_flight == 1  # still at work
            assert held.code() == grpc.StatusCode.UNAVAILABLE  # its client was told
    finally:
        echo.release.set()  # (it would return after 10 s)
    assert [record.getMessage() for record in caplog.records][-2:] == [
        "calls still running past the grace period; left behind, uncounted", "stopped"]


def test_an_http_call_answered_past_the_grace_is_not_counted_cut(model_repository, caplog,
                                                                 monkeypatch):
    """The grace's end cancels gRPC calls, not HTTP ones: granian answers them as they finish,
    and the drain waits for them. One answered 200 past the grace was counted CANCELLED, and
    in the "stopped" line's cancelled=1, as if its client had been cut off."""
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              http_port=held_port())
    labels = {"api": "domain", "method": "Classify", "model": "mlp"}
    before = {code: REGISTRY.get_sample_value("fmnist_requests_total", {**labels, "code": code})
              or 0.0 for code in ("OK", "CANCELLED")}
    caplog.set_level(logging.INFO, logger="serving.server")
    answers, admitted = [], threading.Event()
    with running_server(settings, grace=0.3) as server:
        classify = server.classifier.Classify

        def held(request, call):  # answered once the stop's grace has ended, not before
            admitted.set()
            while time.monotonic() < server.admission.grace_end:  # inf until the stop
                time.sleep(0.01)
            return classify(request, call)

        monkeypatch.setattr(server.classifier, "Classify", held)
        client = threading.Thread(target=lambda: answers.append(requests.post(
            f"http://127.0.0.1:{server.http_port}/v1/classify", json={"images": [[0] * 784]},
            timeout=30).status_code))
        client.start()
        assert admitted.wait(10)
        server.stop(0.3)
        client.join(30)
    assert answers == [200]
    after = {code: REGISTRY.get_sample_value("fmnist_requests_total", {**labels, "code": code})
             or 0.0 for code in before}
    assert {code: after[code] - before[code] for code in after} == {"OK": 1, "CANCELLED": 0}
    stopped = [getattr(record, "fields", {}) for record in caplog.records
               if record.getMessage() == "stopped"]
    assert stopped == [{"cancelled": 0}]
