"""A model run that fails for one request of a stream: a real server on 127.0.0.1:0 serving a
real model that fails when run on some images (``fragile``: one whose first pixel is grey),
real clients (grpcio's)."""

import logging

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from fashion_mnist.v1 import classifier_pb2, classifier_pb2_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.errors import Internal
from tests.conftest import local_settings, running_server, tiny_classifier
from training.repository import write_version

BLACK, GREY = np.zeros((1, 28, 28), np.uint8), np.full((1, 28, 28), 128, np.uint8)
INTERNAL_MESSAGE = str(Internal())


def fragile_classifier():
    """The fixture's tiny classifier plus a Gather whose index is 4000 * p * (1 - p) of each
    image's first pixel p in [0, 1]: 0 for black and white (the trial run's images: the
    version loads), out of its one-element table for grey, which onnxruntime refuses."""
    model = tiny_classifier(5)
    graph = model.graph
    gemm, softmax = (next(node for node in graph.node if node.op_type == op)
                     for op in ("Gemm", "Softmax"))
    features, logits, shifted = gemm.input[0], gemm.output[0], gemm.output[0] + "_shifted"
    softmax.input[0] = shifted
    graph.initializer.extend(numpy_helper.from_array(np.array(value, dtype), name) for value,
                             dtype, name in ((0, np.int64, "first"), (1.0, np.float32, "one"),
                                             (4000.0, np.float32, "scale"),
                                             ([0.0], np.float32, "table"), ([1], np.int64, "axis")))
    nodes = [("Gather", [features, "first"], "pixel", {"axis": 1}),
             ("Sub", ["one", "pixel"], "rest", {}), ("Mul", ["pixel", "rest"], "bump", {}),
             ("Mul", ["bump", "scale"], "scaled", {}),
             ("Cast", ["scaled"], "index", {"to": TensorProto.INT64}),
             ("Gather", ["table", "index"], "zeros", {}),
             ("Unsqueeze", ["zeros", "axis"], "column", {}),
             ("Add", [logits, "column"], shifted, {})]
    at = list(graph.node).index(softmax)
    for offset, (op, inputs, output, attributes) in enumerate(nodes):
        graph.node.insert(at + offset, helper.make_node(op, inputs, [output], **attributes))
    return model


@pytest.fixture
def server(repository_copy, grpc_server):
    write_version(repository_copy, "fragile", fragile_classifier(), {"description": "fails"})
    settings = local_settings(model_repository=repository_copy, grpc_server=grpc_server)
    with running_server(settings) as running:
        yield running


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


def infer_request(images: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="fragile", id=request_id, raw_input_contents=[images.tobytes()],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="UINT8",
                                                      shape=images.shape)])


def failed_runs(v2: pb_grpc.GRPCInferenceServiceStub) -> int:
    """fragile's fail count in ModelStatistics (the metrics outlive each test's server)."""
    statistics = v2.ModelStatistics(pb.ModelStatisticsRequest(name="fragile"), timeout=10)
    return statistics.model_stats[0].inference_stats.fail.count


def crashes(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == "request crashed"]


def test_a_failed_run_is_answered_in_its_place_and_the_stream_goes_on(channel, caplog):
    """As Triton's: the request whose run failed gets its error_message (the one ModelInfer's
    INTERNAL says), and the requests behind it on the stream are answered; it ended the
    stream, INTERNAL, failing every request pipelined behind it. The operator's log has it
    once, with the run's error."""
    v2 = pb_grpc.GRPCInferenceServiceStub(channel)
    failed_before = failed_runs(v2)
    requests = [infer_request(BLACK, "a"), infer_request(GREY, "b"), infer_request(BLACK, "c")]
    answers = list(v2.ModelStreamInfer(iter(requests), timeout=10))
    assert [answer.error_message for answer in answers] == ["", INTERNAL_MESSAGE, ""]
    assert [answer.infer_response.id for answer in answers] == ["a", "b", "c"]
    assert answers[1].infer_response.model_name == "fragile"
    assert len(answers[2].infer_response.raw_output_contents) == 2
    [crash] = crashes(caplog)
    assert crash.levelno == logging.ERROR and crash.exc_info is not None
    assert "out of" in str(crash.exc_info[1].__cause__), crash.exc_info[1].__cause__
    assert failed_runs(v2) == failed_before + 1  # the model's fail count (README says so)


def test_a_failed_run_of_a_unary_call_is_internal_as_before(channel, caplog):
    with pytest.raises(grpc.RpcError) as failed:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(GREY, "u"), timeout=10)
    assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.INTERNAL,
                                                            INTERNAL_MESSAGE)
    assert len(crashes(caplog)) == 1


def test_a_failed_run_ends_a_classify_stream_as_classify_answers_it(channel, caplog):
    """ClassifyStream ends at its first failed request, with Classify's status for it
    (classifier.proto): the answers before it reached the client."""
    requests = [classifier_pb2.ClassifyRequest(model="fragile", images=[image.tobytes()])
                for image in (BLACK, GREY, BLACK)]
    answers = classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(iter(requests),
                                                                         timeout=10)
    assert next(answers).model.name == "fragile"
    with pytest.raises(grpc.RpcError) as failed:
        next(answers)
    assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.INTERNAL,
                                                            INTERNAL_MESSAGE)
    assert len(crashes(caplog)) == 1
