"""What the drain's log says of the calls its grace period cut."""

import asyncio
import logging

import grpc

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
