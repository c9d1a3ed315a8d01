"""One batcher per model version, whoever calls: a stream's batch and unary calls that arrive
while the version is busy share one onnxruntime call (R6: streams used to have a queue of
their own, so they never batched with unary calls and the version ran up to twice the
configured calls at once). ModelStatistics' batch_stats say so, per batch size, as Triton's."""

import asyncio

import grpc
from test_deadlines import (  # noqa: F401 (slow_server: a fixture)
    SLOW_BATCH,
    infer_request,
    slow_server,
    slow_statistics,
    until_the_slot_is_taken,
)

from fashion_mnist.v1 import classifier_pb2 as classifier_pb
from fashion_mnist.v1 import classifier_pb2_grpc as classifier_grpc
from inference import grpc_service_pb2_grpc as pb_grpc


async def test_a_stream_and_unary_calls_share_one_batch(slow_server):  # noqa: F811 (fixture)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow_server.port}") as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        domain = classifier_grpc.ClassifierStub(channel)
        before = await slow_statistics(v2)
        occupying = asyncio.ensure_future(v2.ModelInfer(infer_request(SLOW_BATCH)))
        await until_the_slot_is_taken(slow_server)
        images = [bytes(784)] * 3
        stream = domain.ClassifyStream(iter([classifier_pb.ClassifyRequest(
            images=images, model="slow")]))
        unary = [v2.ModelInfer(infer_request(2)) for _ in range(2)]
        streamed = [response async for response in stream]
        answered = await asyncio.gather(*unary)
        await occupying
        after = await slow_statistics(v2)
    assert [len(response.results) for response in streamed] == [3]
    assert [list(answer.outputs[0].shape) for answer in answered] == [[2, 10], [2, 10]]
    assert after.inference_count - before.inference_count == SLOW_BATCH + 3 + 2 * 2
    assert after.execution_count - before.execution_count == 2  # the big one, then the rest
    ran = {size: count - executions(before).get(size, 0)
           for size, count in executions(after).items()}
    assert {size: count for size, count in ran.items() if count} == {SLOW_BATCH: 1, 3 + 2 * 2: 1}
    for batch in after.batch_stats:  # Triton's: one count per onnxruntime call, in each part
        assert batch.compute_input.count == batch.compute_infer.count == batch.compute_output.count
        assert batch.compute_infer.ns > 0


def executions(statistics) -> dict[int, int]:
    """onnxruntime calls so far, by batch size (images per call)."""
    return {batch.batch_size: batch.compute_infer.count for batch in statistics.batch_stats}
