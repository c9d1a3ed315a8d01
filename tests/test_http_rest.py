"""The REST <-> protobuf translation (serving/http/rest.py) on its own: what each JSON or
binary body becomes, what is refused and with which message, and the REST body of the data
plane's (raw) answers."""

import json
import struct

import numpy as np
import pytest

from inference import grpc_service_pb2 as pb
from inference import model_config_pb2 as config_pb
from serving.errors import InvalidArgument
from serving.http.body import message_json
from serving.http.rest import (
    HEADER_LENGTH,
    OutputForm,
    decode_infer_request,
    encode_infer_response,
)


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def test_json_request_becomes_typed_contents_with_its_parameters():
    pixels = np.arange(2 * 784, dtype=np.int64).reshape(2, 28, 28) % 256
    body = json.dumps({
        "id": "r1", "parameters": {"priority": 2, "note": "x", "ratio": 0.5, "flag": True,
                       "sequence_id": 2**64 - 1},
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 28, 28],
                    "data": pixels.tolist()}],
        "outputs": [{"name": "probabilities",
                     "parameters": {"classification": 3, "binary_data": True}},
                    {"name": "label"}],
    }).encode()
    request, form = decode_infer_request(body, None, "mlp", "2")
    assert (request.model_name, request.model_version, request.id) == ("mlp", "2", "r1")
    assert request.parameters["priority"].int64_param == 2
    assert request.parameters["note"].string_param == "x"
    assert request.parameters["ratio"].double_param == 0.5
    assert request.parameters["flag"].bool_param is True
    assert request.parameters["sequence_id"].uint64_param == 2**64 - 1  # past int64
    tensor = request.inputs[0]
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("images", "UINT8", [2, 28, 28])
    assert list(tensor.contents.uint_contents) == pixels.ravel().tolist()
    assert not request.raw_input_contents
    assert [output.name for output in request.outputs] == ["probabilities", "label"]
    assert request.outputs[0].parameters["classification"].int64_param == 3
    assert "binary_data" not in request.outputs[0].parameters  # the transport's, not the model's
    assert form.is_binary("probabilities") and not form.is_binary("label")


def test_null_is_an_optional_field_left_out():
    """As KServe's and MLServer's data models read it: pydantic clients send None as null."""
    body = json.dumps({
        "id": None, "parameters": None, "outputs": None,
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28],
                    "parameters": None, "data": [0] * 784}],
    }).encode()
    request, _ = decode_infer_request(body, None, "mlp", "")
    assert (request.id, list(request.parameters), list(request.outputs)) == ("", [], [])
    assert list(request.inputs[0].contents.uint_contents) == [0] * 784
    with_output = json.dumps({"inputs": [], "outputs": [{"name": "label", "parameters": None}]})
    request, _ = decode_infer_request(with_output.encode(), None, "mlp", "")
    assert [output.name for output in request.outputs] == ["label"]


def test_a_json_text_may_start_with_a_byte_order_mark():
    """RFC 8259 8.1: a parser may ignore it, as /v1/classify, KServe and MLServer do (was 400)."""
    body = b"\xef\xbb\xbf" + json.dumps({"inputs": [{**IMAGES, "data": [0] * 784}]}).encode()
    request, _ = decode_infer_request(body, None, "mlp", "")
    assert list(request.inputs[0].contents.uint_contents) == [0] * 784


def test_binary_request_becomes_raw_input_contents():
    pixels = bytes(range(256)) * 7
    body, header_length = binary_body(
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 28, 28],
                     "parameters": {"binary_data_size": len(pixels)}}],
         "parameters": {"binary_data_output": True}},
        pixels)
    request, form = decode_infer_request(body, header_length, "mlp", "")
    assert list(request.raw_input_contents) == [pixels]
    padded, _ = decode_infer_request(body, header_length.zfill(12), "mlp", "")  # zeros: a number
    assert padded == request
    assert not request.inputs[0].HasField("contents")
    assert "binary_data_size" not in request.inputs[0].parameters
    assert "binary_data_output" not in request.parameters
    assert form.is_binary("label") and form.is_binary("anything")


IMAGES = {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28]}


@pytest.mark.parametrize(("body", "header_length", "message"), [
    (b"{not json", None, "request body: not valid JSON"),
    (b"\xff\xfe{}", None, "request body: not valid JSON"),
    (b"[" * 100_000, None, "request body: not valid JSON"),
    (b'{"inputs": [], "x": NaN}', None, "request body: not valid JSON"),
    (b"[]", None, "request body: expected a JSON object, got an array"),
    (b"{}", None, "inputs: expected a JSON array, got nothing"),
    (b'{"inputs": 3}', None, "inputs: expected a JSON array, got a number"),
    (b'{"inputs": [3]}', None, "inputs[0]: expected a JSON object, got a number"),
    (b'{"inputs": [{"datatype": "UINT8"}]}', None, "inputs[0].name: expected a string"),
    (json.dumps({"inputs": [{**IMAGES, "shape": ["1", 28, 28]}]}).encode(), None,
     "inputs['images'].shape: expected integers, got [\"1\", 28, 28]"),
    (json.dumps({"inputs": [{**IMAGES, "shape": [1.0, 28, 28]}]}).encode(), None,
     "inputs['images'].shape: expected integers"),
    (json.dumps({"inputs": [{**IMAGES, "shape": [True, 28, 28]}]}).encode(), None,
     "inputs['images'].shape: expected integers"),
    (json.dumps({"inputs": [{**IMAGES, "shape": [2**63, 28, 28]}]}).encode(), None,
     "inputs['images'].shape: dimensions out of range"),
    (json.dumps({"inputs": [{**IMAGES, "shape": [2**70, 28, 28]}]}).encode(), None,
     "inputs['images'].shape: expected integers"),  # past 64 bits JSON numbers are floats
    (json.dumps({"inputs": [{**IMAGES, "shape": "1,28,28"}]}).encode(), None,
     "inputs['images'].shape: expected a JSON array, got a string"),
    (json.dumps({"inputs": [{**IMAGES, "data": "abc"}]}).encode(), None,
     "inputs['images'].data: expected a JSON array, got a string"),
    (json.dumps({"inputs": [{**IMAGES, "data": [-1] * 784}]}).encode(), None,
     "inputs['images'].data: value 0 (row-major) is -1, not a UINT8 value"),
    # the data plane's words named protobuf fields the client never sent (uint_contents)
    (json.dumps({"inputs": [{**IMAGES, "data": [0, 256] * 392}]}).encode(), None,
     "inputs['images'].data: value 1 (row-major) is 256, not a UINT8 value"),
    (json.dumps({"inputs": [IMAGES]}).encode(), None,
     "inputs['images']: no data; expected data, or parameters.binary_data_size"),
    (bytes(784), None, "request body: not valid JSON (unexpected character, expected a JSON "
     f"value: line 1 column 1 (char 0)); a raw binary request needs {HEADER_LENGTH}: 0"),
    (json.dumps({"inputs": [{**IMAGES, "data": [[1, 2], 3]}]}).encode(), None,
     "inputs['images'].data: arrays and values side by side; expected nested arrays of one"),
    (json.dumps({"inputs": [{**IMAGES, "data": [[1, 2], [[3]]]}]}).encode(), None,
     "inputs['images'].data: value 2 (row-major) is [3], not a UINT8 value"),
    (json.dumps({"inputs": [{**IMAGES, "data": [7, 0.5] * 392}]}).encode(), None,
     "inputs['images'].data: value 1 (row-major) is 0.5, not a UINT8 value"),
    (json.dumps({"inputs": [{**IMAGES, "data": [True] * 784}]}).encode(), None,
     "inputs['images'].data: value 0 (row-major) is true, not a UINT8 value"),
    (json.dumps({"inputs": [{**IMAGES, "data": ["7"] * 784}]}).encode(), None,
     "inputs['images'].data: value 0 (row-major) is \"7\", not a UINT8 value"),
    (json.dumps({"inputs": [{**IMAGES, "data": [1],
                             "parameters": {"binary_data_size": 0}}]}).encode(), None,
     "inputs['images']: data given both as JSON data and as binary"),
    (json.dumps({"inputs": [{**IMAGES, "parameters": {"binary_data_size": -1}}]}).encode(),
     None, "inputs['images'].parameters.binary_data_size: expected a byte count, got -1"),
    (json.dumps({"inputs": [{**IMAGES, "parameters": {"binary_data_size": None}}]}).encode(),
     None, "inputs['images'].parameters.binary_data_size: expected a byte count, got null"),
    (json.dumps({"inputs": [{**IMAGES, "parameters": {"binary_data_size": 784}}]}).encode(),
     None, "inputs['images'].parameters.binary_data_size: 784 bytes at offset"),
    (json.dumps({"inputs": [], "parameters": {"binary_data_output": 1}}).encode(), None,
     "parameters.binary_data_output: expected true or false, got a number"),
    (json.dumps({"inputs": [], "parameters": {"p": [1]}}).encode(), None,
     "parameters.p: expected a boolean, integer, number or string, got [1]"),
    (json.dumps({"inputs": [], "outputs": [{"parameters": {}}]}).encode(), None,
     "outputs[0].name: expected a string, got nothing"),
    (json.dumps({"inputs": [], "outputs": [{"name": "label",
                                            "parameters": {"binary_data": "yes"}}]}).encode(),
     None, "outputs['label'].parameters.binary_data: expected true or false, got a string"),
    (json.dumps({"inputs": [], "id": 7}).encode(), None, "id: expected a string, got a number"),
    # Python's words for JSON's types ("got list", "got str", "got bool", "got float")
    (b'{"inputs": true}', None, "inputs: expected a JSON array, got true"),
    (b'{"inputs": [], "outputs": [{"name": 1.5}]}', None,
     "outputs[0].name: expected a string, got a number"),
    (b'{"inputs": []}', "x12", f"{HEADER_LENGTH}: expected a byte count, got 'x12'"),
    (b'{"inputs": []}', "-1", f"{HEADER_LENGTH}: expected a byte count"),
    (b'{"inputs": []}', "99", f"{HEADER_LENGTH}: 99 points past the end of the body (14 bytes)"),
    (b'{"inputs": []}xyz', "14", "request body: 3 bytes after the JSON and the binary data"),
])
def test_what_cannot_be_translated_is_invalid_argument_naming_the_field(body, header_length,
                                                                        message):
    with pytest.raises(InvalidArgument) as refused:
        decode_infer_request(body, header_length, "mlp", "")
    assert str(refused.value).startswith(message), str(refused.value)


@pytest.mark.parametrize("body", [b'"hello"', b"null", b"5", b"--boundary\r\n" * 8])
def test_only_a_body_of_one_raw_image_is_told_about_the_raw_request_header(body):
    """Any JSON text but an object, or a form, got "a raw binary request needs
    Inference-Header-Content-Length: 0" too."""
    with pytest.raises(InvalidArgument) as refused:
        decode_infer_request(body, None, "mlp", "")
    assert "raw binary" not in str(refused.value), str(refused.value)


def test_binary_sizes_slice_the_body_in_input_order():
    body, header_length = binary_body(
        {"inputs": [{"name": "a", "datatype": "UINT8", "shape": [3],
                     "parameters": {"binary_data_size": 3}},
                    {"name": "b", "datatype": "UINT8", "shape": [2],
                     "parameters": {"binary_data_size": 2}}]},
        b"abc", b"de")
    request, _ = decode_infer_request(body, header_length, "m", "")
    assert list(request.raw_input_contents) == [b"abc", b"de"]


PROBABILITIES = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
LABELS = np.array([1, 0], np.int64)
TOP = [b"0.750000:1:Trouser", b"0.500000:0:T-shirt/top"]


def answer() -> pb.ModelInferResponse:
    """An answer as the data plane gives it (serving.codecs.inference): raw."""
    response = pb.ModelInferResponse(model_name="mlp", model_version="2", id="r1")
    response.outputs.add(name="probabilities", datatype="FP32", shape=[2, 2])
    response.outputs.add(name="label", datatype="INT64", shape=[2])
    response.outputs.add(name="top", datatype="BYTES", shape=[2, 1])
    response.raw_output_contents.extend([
        PROBABILITIES.tobytes(), LABELS.tobytes(),
        b"".join(struct.pack("<I", len(entry)) + entry for entry in TOP)])
    return response


def test_json_answer_has_each_outputs_data():
    body = encode_infer_response(answer(), OutputForm())
    assert body.content_type == "application/json" and not body.headers
    document = json.loads(body.data)
    assert document == {
        "model_name": "mlp", "model_version": "2", "id": "r1", "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 2],
             "data": PROBABILITIES.ravel().tolist()},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
            {"name": "top", "datatype": "BYTES", "shape": [2, 1],
             "data": ["0.750000:1:Trouser", "0.500000:0:T-shirt/top"]}]}


def test_fp32_data_is_written_as_float32_numbers():
    """0.1 as float32 was written at double precision, 0.10000000149011612 (~43% of a batch's
    answer): float32's shortest form, which reads back as the same float32."""
    values = np.array([0.1, 1 / 3, 1e-8, 3.4e38, 123456.789, 0.0], np.float32)
    response = pb.ModelInferResponse(model_name="mlp")
    response.outputs.add(name="probabilities", datatype="FP32", shape=[6])
    response.raw_output_contents.append(values.tobytes())
    data = encode_infer_response(response, OutputForm()).data
    assert b'"data":[0.1,0.33333334,1e-8,3.4e+38,123456.79,0.0]' in data
    read = np.array(json.loads(data)["outputs"][0]["data"], np.float32)
    assert read.tobytes() == values.tobytes()


def test_binary_answer_follows_the_json_header_in_output_order():
    body = encode_infer_response(answer(), OutputForm(True, {"label": False}))
    assert body.content_type == "application/octet-stream"
    (name, length), = body.headers
    assert name == HEADER_LENGTH
    header = json.loads(body.data[:int(length)])
    outputs = {output["name"]: output for output in header["outputs"]}
    assert outputs["label"]["data"] == [1, 0]
    sizes = [outputs[name]["parameters"]["binary_data_size"] for name in ("probabilities", "top")]
    blobs = body.data[int(length):]
    assert len(blobs) == sum(sizes)
    assert np.array_equal(np.frombuffer(blobs[:sizes[0]], "<f4").reshape(2, 2), PROBABILITIES)
    top, entries = blobs[sizes[0]:], []
    while top:
        (size,) = struct.unpack_from("<I", top)
        entries.append(top[4:4 + size])
        top = top[4 + size:]
    assert entries == TOP


def test_metadata_json_has_numbers_and_defaults_like_triton():
    config = config_pb.ModelConfig(
        name="mlp", max_batch_size=8,
        input=[config_pb.ModelInput(name="images", data_type=config_pb.TYPE_UINT8,
                                    dims=[28, 28])])
    document = message_json(config)
    assert document["input"][0]["dims"] == [28, 28]
    assert document["input"][0]["data_type"] == "TYPE_UINT8"
    assert document["max_batch_size"] == 8
    stats = message_json(pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(
        name="mlp", version="1", inference_count=3,
        inference_stats=pb.InferStatistics(success=pb.StatisticDuration(count=3, ns=10)))]))
    entry = stats["model_stats"][0]
    assert entry["inference_count"] == 3 and entry["execution_count"] == 0
    assert entry["inference_stats"]["success"] == {"count": 3, "ns": 10}
