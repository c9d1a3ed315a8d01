"""A model run that fails for one request of a stream: a real server on 127.0.0.1:0 serving a
real model that fails when run on some images (``fragile``: one whose first pixel is grey),
real clients (grpcio's)."""

import logging

import grpc
import numpy as np
import pytest

from fashion_mnist.v1 import classifier_pb2, classifier_pb2_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.errors import Internal
from tests.fragile_model import BLACK, GREY

INTERNAL_MESSAGE = str(Internal())


@pytest.fixture
def channel(fragile_server):
    with grpc.insecure_channel(f"127.0.0.1:{fragile_server.port}") as opened:
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
    assert str(crash.exc_info[1]).startswith("the run of fragile version 1 failed: ")  # which
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
