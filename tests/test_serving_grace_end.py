"""What the drain's log and metrics say of the calls its grace period cut."""

import asyncio
import logging
import time

import grpc
from prometheus_client import REGISTRY

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc
from tests.conftest import local_settings, running_server


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
        assert {await call.code() for call in calls} == {grpc.StatusCode.UNAVAILABLE}
    # grpcio's stop returns before its call threads have ended: their counts may come later
    until = time.monotonic() + 10
    while sum(counted().values()) < sum(before.values()) + streams and time.monotonic() < until:
        await asyncio.sleep(0.01)
    after = counted()
    assert {code: after[code] - before[code] for code in after} == {"OK": 0, "CANCELLED": streams}
