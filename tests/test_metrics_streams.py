"""Streams in the metrics: a stream's call is counted under the model its requests name."""

import asyncio

import grpc
import numpy as np

from fashion_mnist.v1 import classifier_pb2 as classifier_pb
from fashion_mnist.v1 import classifier_pb2_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from tests.test_metrics import metered, scrape, value  # noqa: F401 (metered: a fixture)

IMAGE = np.zeros((1, 28, 28), dtype=np.uint8)


def infer(model: str) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=IMAGE.shape)], raw_input_contents=[IMAGE.tobytes()])


async def test_a_stream_is_counted_under_the_model_its_requests_name(metered):  # noqa: F811
    """Streams were all counted under model "": an operator saw no model's streamed calls
    (tritonclient's and perf_analyzer's streams, ClassifyStream). One whose requests name
    several models is counted under none (""), not under one of them."""
    server, port = metered
    before = await asyncio.to_thread(scrape, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        domain = classifier_pb2_grpc.ClassifierStub(channel)
        for models in (["softmax"] * 3, ["mlp", "softmax"], ["nope"]):
            answers = [answer async for answer in v2.ModelStreamInfer(map(infer, models))]
            assert len(answers) == len(models)
        classify = classifier_pb.ClassifyRequest(images=[IMAGE.tobytes()])  # the default: mlp
        assert len([answer async for answer in domain.ClassifyStream([classify] * 2)]) == 2
    after = await asyncio.to_thread(scrape, port)

    def moved(name: str, method: str, model: str, **code) -> float:
        labels = {"api": "v2" if method == "ModelStreamInfer" else "domain", "method": method,
                  "model": model, **code}
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("fmnist_requests_total", "ModelStreamInfer", "softmax", code="OK") == 1
    assert moved("fmnist_request_duration_seconds_count", "ModelStreamInfer", "softmax") == 1
    assert moved("fmnist_requests_total", "ModelStreamInfer", "", code="OK") == 1  # 2 models
    assert moved("fmnist_requests_total", "ModelStreamInfer", "other", code="OK") == 1
    assert moved("fmnist_requests_total", "ClassifyStream", "mlp", code="OK") == 1
