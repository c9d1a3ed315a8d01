"""Versions and model names in the Open Inference Protocol, as Triton reads them: which
version a string names (std::stol's reading), which versions metadata lists, and the refusals
of unknown or malformed ones, named by each request's own field (tests/test_inference_api.py:
the tensors)."""

import grpc
import pytest

from fashion_mnist.v1 import classifier_pb2 as classifier_pb
from inference import grpc_service_pb2 as pb
from tests.test_inference_api import raw_request, v2

__all__ = ["v2"]  # the fixture, shared with tests/test_inference_api.py


async def test_model_ready_per_version_and_not_found_as_tritons(v2):
    """An unknown model or version is NOT_FOUND, as Triton's ModelReady (and KServe's) answer
    it: tritonclient's is_model_ready raises there, and a client waiting for a misspelt model
    is told so; it answered ready false, which such a client waits on forever."""
    ready = [(await v2.ModelReady(pb.ModelReadyRequest(name="mlp", version=v))).ready
             for v in ("", "1", "2")]
    assert ready == [True, True, True]
    for name, version, message in (("mlp", "3", "version: model 'mlp' has no version 3"),
                                   ("nope", "", "name: no model 'nope'")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await v2.ModelReady(pb.ModelReadyRequest(name=name, version=version))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details().startswith(message), refused.value.details()


async def test_metadata_of_a_version_lists_that_version_as_tritons_does(v2):
    """Triton's ModelMetadata lists the version asked for, or every loaded one if none is."""
    listed = [list((await v2.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version=v))
                    ).versions) for v in ("", "1", "2")]
    assert listed == [["1", "2"], ["1"], ["2"]]


async def test_a_version_is_read_as_tritons_std_stol_reads_it(v2):
    """Triton reads a version string with std::stol: leading whitespace (C's isspace), a sign
    and leading zeros allowed: "02" was version 2 here, while "+2" was refused
    INVALID_ARGUMENT, and so was " 2" until now. What std::stol would leave unread after the
    digits ("2 ", "2x", "2.5": Triton's version 2) is refused: it may not be what was meant."""
    listed = [list((await v2.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version=v))
                    ).versions) for v in ("+2", "02", "+01", " 2", "\t\n\v\f\r +01")]
    assert listed == [["2"], ["2"], ["1"], ["2"], ["1"]]
    for version in ("2 ", "2x", "2.5", "+ 2", "\u00a02"):  # the last: not a C space
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await v2.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version=version))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, version


async def test_statistics_of_a_version_need_the_model_name(v2):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await v2.ModelStatistics(pb.ModelStatisticsRequest(version="1"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("name:")


@pytest.mark.parametrize("version", ["9" * 5000, "9223372036854775808"])
async def test_a_version_past_int64_is_invalid_argument_on_every_method(v2, version):
    """int() refuses more than 4300 digits: each method crashed INTERNAL, with a traceback
    logged per call. The message names the request's own field: ModelInferRequest's
    model_version, the others' version (all said model_version, a field they lack)."""
    calls = [(v2.ModelInfer(raw_request(model_version=version)), "model_version"),
             (v2.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version=version)), "version"),
             (v2.ModelConfig(pb.ModelConfigRequest(name="mlp", version=version)), "version"),
             (v2.ModelStatistics(pb.ModelStatisticsRequest(name="mlp", version=version)),
              "version"),
             (v2.ModelReady(pb.ModelReadyRequest(name="mlp", version=version)), "version")]
    for call, field in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(f"{field}: expected")


async def test_an_unknown_model_or_version_is_named_by_the_requests_own_field(v2, stub):
    """NOT_FOUND names the field that gave the name or version, as every other refusal does:
    ModelInfer (and its stream) said "model: no model 'nope'" and "version: model 'mlp' has no
    version 9", fields ModelInferRequest lacks, while a malformed version there was already
    "model_version: expected ..."; ModelMetadata, ModelConfig, ModelStatistics and GetModel
    said "model:" for their ``name``."""
    nope = raw_request()
    nope.model_name = "nope"
    unknown = [(v2.ModelInfer(nope), "model_name: no model 'nope'"),
               (v2.ModelInfer(raw_request(model_version="9")), "model_version: model 'mlp' "),
               (v2.ModelMetadata(pb.ModelMetadataRequest(name="nope")), "name: no model"),
               (v2.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version="9")), "version:"),
               (v2.ModelConfig(pb.ModelConfigRequest(name="nope")), "name: no model"),
               (v2.ModelStatistics(pb.ModelStatisticsRequest(name="nope")), "name: no model"),
               (stub.GetModel(classifier_pb.GetModelRequest(name="nope")), "name: no model"),
               (stub.Classify(classifier_pb.ClassifyRequest(model="nope", images=[bytes(784)])),
                "model: no model 'nope'")]
    for call, message in unknown:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details().startswith(message), refused.value.details()
    streamed = [answer.error_message async for answer in v2.ModelStreamInfer(iter(
        [nope, raw_request(model_version="9")]))]
    assert [message.split(":")[0] for message in streamed] == ["model_name", "model_version"]
