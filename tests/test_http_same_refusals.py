"""The same request refused over HTTP and over gRPC is refused for the same first fault, with
the same message: the REST translation (serving/http/rest.py) converts only what the data
plane would read, so its own refusals never come before the data plane's more basic ones."""

import logging
import socket

import grpc
import pytest
import requests

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from tests.http_helpers import http_and_grpc
from tests.test_http_api import MAX_IMAGES, served, url, v2

__all__ = ["served", "url", "v2"]  # the fixtures, shared with tests/test_http_api.py

IMAGE = {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28]}


def grpc_request(version: str, tensors: list[dict]) -> pb.ModelInferRequest:
    """The gRPC request a client sends for the JSON inputs ``{**IMAGE, **tensor}``."""
    request = pb.ModelInferRequest(model_name="mlp", model_version=version)
    for fields in ({**IMAGE, **tensor} for tensor in tensors):
        added = request.inputs.add(name=fields["name"], datatype=fields["datatype"],
                                   shape=fields["shape"])
        if fields["datatype"] == "UINT8":
            added.contents.uint_contents.extend(fields.get("data", []))
        else:  # FP32: its values, whatever they are in JSON, as numbers
            added.contents.fp32_contents.extend([0.0] * len(fields.get("data", [])))
    return request


# (JSON input or a body as is, the version in the URL, the message both transports answer)
CASES = {
    # said "no data" (gRPC: the shape)
    "shape [1,784] without data": ({"shape": [1, 784]}, "",
                                   "inputs['images'].shape: expected [N,28,28], got [1, 784]"),
    "shape [-1,28,28] without data": ({"shape": [-1, 28, 28]}, "",
                                      "inputs['images'].shape: expected [N,28,28], got [-1, 28, "
                                      "28]"),
    # data the data plane never looks at: a value in it was said first
    "shape [1,784] with a 256": ({"shape": [1, 784], "data": [256] * 784}, "",
                                 "inputs['images'].shape: expected [N,28,28], got [1, 784]"),
    "FP32 data": ({"datatype": "FP32", "data": ["x"] * 784}, "",
                  "inputs['images'].datatype: expected UINT8, got 'FP32'"),
    "too many images, with a 256": (
        {"shape": [MAX_IMAGES + 1, 28, 28], "data": [256] * (MAX_IMAGES + 1) * 784}, "",
        f"inputs['images']: expected at most {MAX_IMAGES} images per request"),
    # a second input: the first one's data was read, and its 256 said, or its lack of data
    "two inputs, a 256 in the first": ([{"data": [256] * 784}, {"name": "extra", "data": [0]}],
                                       "", "inputs: expected one input 'images', got ['images', "
                                       "'extra']"),
    "images twice, the first without data": ([{}, {"data": [0] * 784}], "",
                                             "inputs: expected one input 'images', got "
                                             "['images', 'images']"),
    # a bad body too: said "version: expected", ModelMetadata's field, not ModelInfer's
    "a bad version and a bad body": (b"{oops", "x", "model_version: expected"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_refusal_is_the_same_over_http_and_grpc(url, v2, case):
    tensor, version, message = CASES[case]
    path = "/v2/models/mlp" + (f"/versions/{version}" if version else "") + "/infer"
    tensors = tensor if isinstance(tensor, list) else [tensor]
    if isinstance(tensor, bytes):
        answer = requests.post(url + path, data=tensor, timeout=10)
        tensors = [{"data": [0] * 784}]  # the gRPC request has no body to get wrong
    else:
        answer = requests.post(url + path, json={"inputs": [{**IMAGE, **t} for t in tensors]},
                               timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(message), answer.json()["error"]
    with pytest.raises(grpc.RpcError) as refused:
        v2.ModelInfer(grpc_request(version, tensors))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(message), refused.value.details()


def test_of_many_outputs_only_as_many_as_grpc_reads_are_looked_at(model_repository):
    """200,000 JSON outputs entries (3 MB) were each translated before the data plane refused
    the first unknown one: 0.65 s of the GIL over HTTP, where gRPC, since it counts them first,
    took 0.03 s. One more than the model has is translated now, so a fault in a later entry
    goes unseen, as it does over gRPC: both name the first unknown output."""
    message = "outputs['x']: model 'mlp' has no such output; it has ['label', 'probabilities']"
    with http_and_grpc(model_repository) as (_, url, channel):
        answer = requests.post(f"{url}/v2/models/mlp/infer", timeout=30, json={
            "inputs": [{**IMAGE, "data": [0] * 784}], "outputs": [{"name": "x"}] * 200_000 + [5]})
        assert (answer.status_code, answer.json()["error"]) == (400, message)
        request = grpc_request("", [{"data": [0] * 784}])
        request.outputs.extend([pb.ModelInferRequest.InferRequestedOutputTensor(name="x")]
                               * 200_000)
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, message)


def test_the_server_metadata_is_at_v2_slash_too(url):
    """The protocol's OpenAPI file (open_inference_rest.yaml) names the path "/v2/"."""
    assert requests.get(f"{url}/v2/", timeout=5).json() == requests.get(f"{url}/v2",
                                                                         timeout=5).json()


@pytest.mark.parametrize(("value", "field", "given"), [
    (0, "int64_param", "0"), (-1, "int64_param", "-1"),
    (2**63, "uint64_param", "9223372036854775808"), (2.5, "double_param", "2.5"),
    ("2", "string_param", '"2" (a string)'), (True, "bool_param", "true")])
def test_a_refused_classification_parameter_says_what_was_given(url, v2, value, field, given):
    """It said "expected int64 >= 1" alone: a client sending 0, "3" or 2.5 was not told which;
    then it said it in protobuf's text format (`string_param: "2"`), words neither a JSON nor
    a tritonclient user wrote."""
    message = (f"outputs['probabilities'].parameters['classification']: expected int64 >= 1, "
               f"got {given}")
    answer = requests.post(f"{url}/v2/models/mlp/infer", timeout=10, json={
        "inputs": [{**IMAGE, "data": [0] * 784}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": value}}]})
    assert (answer.status_code, answer.json()["error"]) == (400, message)
    request = grpc_request("", [{"data": [0] * 784}])
    request.outputs.add(name="probabilities").parameters["classification"].CopyFrom(
        pb.InferParameter(**{field: value}))
    with pytest.raises(grpc.RpcError) as refused:
        v2.ModelInfer(request)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no IPv6 here")
def test_a_failed_call_names_its_client_in_the_same_form_over_http_and_grpc(model_repository,
                                                                          caplog):
    """A `request failed` line's peer was a bare address over HTTP ("127.0.0.1", "::1") and
    gRPC's URI over gRPC ("ipv4:127.0.0.1:PORT", "ipv6:%5B::1%5D:PORT"): one search of the log
    for a client found the calls of one transport only. granian gives no port."""
    caplog.set_level(logging.DEBUG, logger="serving.pipeline")
    with http_and_grpc(model_repository, host="::") as (server, _, _):
        for client in ("127.0.0.1", "[::1]"):  # the first as "::ffff:127.0.0.1" on "::"
            caplog.clear()
            with (grpc.insecure_channel(f"{client}:{server.port}") as channel,
                  pytest.raises(grpc.RpcError)):
                pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                    pb.ModelMetadataRequest(name="nothing"))
            assert requests.get(f"http://{client}:{server.http_port}/v2/models/nothing",
                                timeout=10).status_code == 404
            grpc_peer, http_peer = [record.fields["peer"] for record in caplog.records
                                    if record.getMessage() == "request failed"]
            assert grpc_peer.startswith(http_peer + ":") and grpc_peer != http_peer + ":"
            assert http_peer == {"127.0.0.1": "ipv4:127.0.0.1", "[::1]": "ipv6:%5B::1%5D"}[client]
