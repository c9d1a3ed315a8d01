"""Open Inference Protocol REST bodies <-> the protocol's protobuf messages.

Only the translation lives here: JSON (or JSON followed by binary tensors, Triton's binary data
extension) becomes a ``ModelInferRequest`` (binary tensors in ``raw_input_contents``, JSON
``data`` in the typed ``contents``), and a ``ModelInferResponse`` becomes JSON with each output
as JSON ``data`` or as binary, as the request asked (the data plane answers raw, as Triton's).
Whether the tensors suit the model is the data plane's codec's question
(``serving.codecs.inference``); what is refused here is what cannot be translated: a body that
is not JSON, a header length past the body, a shape that is not integers, binary sizes that do
not add up, a raw binary body that is not one image. A raw binary request
(``Inference-Header-Content-Length: 0``, the body the model's one input alone: every model
here has that one input, ``common.contract``) is, as the extension says, a batch of one whose
outputs all come back binary.
"""

import json
import struct
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import orjson

from common.contract import IMAGE_BYTES, IMAGE_SHAPE, IMAGES
from inference import grpc_service_pb2 as pb
from serving.errors import InvalidArgument
from serving.http.body import Body, parse_json

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE, BINARY_OUTPUT, BINARY_ALL = "binary_data_size", "binary_data", "binary_data_output"
BINARY_TYPE = "application/octet-stream"
# The answers' datatypes besides FP32 and BYTES, which the data plane's outputs have
# (serving.codecs.inference): their wire dtype.
NUMPY_TYPES = {"INT64": "<i8"}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class OutputForm:
    """Which outputs the client wants as binary: by name, else ``binary_data_output``."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)


def decode_infer_request(body: bytes, header_length: str | None, model_name: str,
                         model_version: str, *, max_images: int = 2**63,
                         model_outputs: int = 2**63) -> tuple[pb.ModelInferRequest, OutputForm]:
    """A POST .../infer body (and its Inference-Header-Content-Length) -> the protobuf request
    and the output form asked for; JSON data the data plane refuses unread is not converted,
    nor outputs past one more than the model's (``model_outputs``): of those, one is unknown
    or asked twice, and the data plane refuses that one (250,000 were translated in 0.6 s)."""
    json_end = _json_end(body, header_length)
    if header_length is not None and json_end == 0:  # the body is the one input's bytes alone
        # the shape below is this code's, not the client's: a wrong size is refused here, in
        # the words of serving.codecs.images, rather than as a shape the client never sent
        if len(body) != IMAGE_BYTES:
            raise InvalidArgument(f"request body: a raw binary request ({HEADER_LENGTH}: 0) is "
                                  f"one image: expected {IMAGE_BYTES} bytes (28x28 uint8), got "
                                  f"{len(body)}")
        request = pb.ModelInferRequest(model_name=model_name, model_version=model_version,
                                       raw_input_contents=[body])
        request.inputs.add(name=IMAGES, datatype="UINT8", shape=[1, *IMAGE_SHAPE])
        return request, OutputForm(default_binary=True)
    try:
        document = _expect(dict, parse_json(body[:json_end]), "request body")
    except InvalidArgument as error:
        if header_length is None and b'"binary_data_size"' in body:
            raise InvalidArgument(f"{error}; binary tensor data after the JSON needs the "
                                  f"{HEADER_LENGTH} header (the JSON's length)") from None
        if header_length is None and len(body) == IMAGE_BYTES:  # one raw image, most likely
            raise InvalidArgument(f"{error}; a raw binary request needs {HEADER_LENGTH}: 0"
                                  ) from None
        raise
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version,
                                   id=_expect(str, _optional(document, "id", ""), "id"))
    parameters = _expect(dict, _optional(document, "parameters", {}), "parameters")
    default_binary = _expect(bool, parameters.get(BINARY_ALL, False), f"parameters.{BINARY_ALL}")
    _set_parameters(request.parameters, parameters, "parameters", skip=BINARY_ALL)
    offset = json_end
    inputs = _expect(list, document.get("inputs"), "inputs")
    for index, tensor in enumerate(inputs):
        offset = _add_input(request, _expect(dict, tensor, f"inputs[{index}]"), index, body,
                            offset, max_images=max_images if len(inputs) == 1 else 0)
    if offset != len(body):
        raise InvalidArgument(f"request body: {len(body) - offset} bytes after the JSON and the "
                              "binary data its inputs declare (parameters.binary_data_size)")
    binary = {}
    outputs = _expect(list, _optional(document, "outputs", []), "outputs")
    for index, entry in enumerate(outputs[:model_outputs + 1]):
        tensor = _expect(dict, entry, f"outputs[{index}]")
        name = _expect(str, tensor.get("name"), f"outputs[{index}].name")
        output = request.outputs.add(name=name)
        parameters = _expect(dict, _optional(tensor, "parameters", {}),
                             f"outputs[{name!r}].parameters")
        if BINARY_OUTPUT in parameters:
            binary[name] = _expect(bool, parameters[BINARY_OUTPUT],
                                 f"outputs[{name!r}].parameters.{BINARY_OUTPUT}")
        _set_parameters(output.parameters, parameters, f"outputs[{name!r}].parameters",
                        skip=BINARY_OUTPUT)
    return request, OutputForm(default_binary, binary)


def _json_end(body: bytes, header_length: str | None) -> int:
    if header_length is None:
        return len(body)
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgument(f"{HEADER_LENGTH}: expected a byte count, got {header_length!r}")
    number = text.lstrip("0") or "0"  # more digits than the body's length: past its end
    if len(number) > len(str(len(body))) or int(number) > len(body):  # (no int() of 5,000)
        raise InvalidArgument(
            f"{HEADER_LENGTH}: {text} points past the end of the body ({len(body)} bytes)")
    return int(number)


def _add_input(request: pb.ModelInferRequest, tensor: dict, index: int, body: bytes,
               offset: int, *, max_images: int) -> int:
    """Appends one input; returns the offset of the next binary tensor in ``body``."""
    name = _expect(str, tensor.get("name"), f"inputs[{index}].name")
    field_name = f"inputs[{name!r}]"
    datatype = _expect(str, tensor.get("datatype"), f"{field_name}.datatype")
    shape = _expect(list, tensor.get("shape"), f"{field_name}.shape")
    if not all(type(dim) is int for dim in shape):
        raise InvalidArgument(f"{field_name}.shape: expected integers, got {json.dumps(shape)}")
    try:
        added = request.inputs.add(name=name, datatype=datatype, shape=shape)
    except ValueError:
        raise InvalidArgument(f"{field_name}.shape: dimensions out of range, got {shape}") from None
    parameters = _expect(dict, _optional(tensor, "parameters", {}), f"{field_name}.parameters")
    _set_parameters(added.parameters, parameters, f"{field_name}.parameters", skip=BINARY_SIZE)
    if BINARY_SIZE not in parameters:
        # the data plane refuses any other input before it looks at the data: its words first
        if not ((name, datatype) == (IMAGES, "UINT8") and len(shape) == 3
                and 0 < shape[0] <= max_images and tuple(shape[1:]) == IMAGE_SHAPE and not any(
                    key.startswith("shared_memory") for key in parameters)):
            return offset
        if tensor.get("data", []) == []:
            raise InvalidArgument(f"{field_name}: no data; expected data, or "
                                  f"parameters.{BINARY_SIZE} and the bytes after the JSON")
        _set_contents(added, tensor["data"], field_name)
        return offset
    if "data" in tensor:
        raise InvalidArgument(f"{field_name}: data given both as JSON data and as binary "
                              f"({BINARY_SIZE}); use one")
    size = parameters[BINARY_SIZE]
    if type(size) is not int or size < 0:
        raise InvalidArgument(
            f"{field_name}.parameters.{BINARY_SIZE}: expected a byte count, got {json.dumps(size)}")
    if offset + size > len(body):
        raise InvalidArgument(
            f"{field_name}.parameters.{BINARY_SIZE}: {size} bytes at offset {offset} go past "
            f"the end of the body ({len(body)} bytes)")
    request.raw_input_contents.append(body[offset:offset + size])
    return offset + size


def _set_contents(tensor, data, field_name: str) -> None:
    """JSON data, flat or nested row-major, into ``uint_contents``: only the images' data is
    converted (UINT8, the one input whose data the codec reads; ``_add_input``)."""
    values = _expect(list, data, f"{field_name}.data")
    while values and isinstance(values[0], list):
        if not all(isinstance(value, list) for value in values):
            raise InvalidArgument(f"{field_name}.data: arrays and values side by side; "
                                  "expected nested arrays of one depth")
        values = list(chain.from_iterable(values))
    try:
        contents = tensor.contents.uint_contents
        contents.extend(values)
        # uint_contents takes 256 and up, and the codec's refusal would name that field
        if contents and np.array(contents, np.uint32).max() > 255:
            raise ValueError
    except (TypeError, ValueError):  # protobuf's words name its own field: find the value
        scratch = type(tensor.contents)().uint_contents
        for index, value in enumerate(values):
            try:
                scratch.append(value)
                if value not in range(256):
                    raise ValueError
            except (TypeError, ValueError):
                raise InvalidArgument(
                    f"{field_name}.data: value {index} (row-major) is "
                    f"{json.dumps(value)[:40]}, not a {tensor.datatype} value") from None
        raise InvalidArgument(f"{field_name}.data: expected {tensor.datatype} values") from None


def _set_parameters(target, parameters: dict, field_name: str, skip: str) -> None:
    for key, value in parameters.items():
        if key == skip:
            continue
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int) and -2**63 <= value < 2**63:
            parameter.int64_param = value
        elif isinstance(value, int) and 0 <= value < 2**64:  # Triton's sequence_id, priority
            parameter.uint64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise InvalidArgument(f"{field_name}.{key}: expected a boolean, integer, number or "
                                  f"string, got {json.dumps(value)[:40]}")


_EXPECTED = {dict: "a JSON object", list: "a JSON array", str: "a string", bool: "true or false"}
# what a JSON value is, in JSON's words (not Python's: list, str, int, float, bool)
_GOT = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def _expect(kind: type, value, field_name: str):
    """``value`` if it is a JSON ``kind``, else InvalidArgument naming the field."""
    if not isinstance(value, kind):
        got = ("nothing" if value is None else json.dumps(value) if isinstance(value, bool)
               else _GOT[type(value)])
        raise InvalidArgument(f"{field_name}: expected {_EXPECTED[kind]}, got {got}")
    return value


def _optional(document: dict, key: str, default):
    """An optional field's value; JSON null is its absence, as KServe and MLServer read it."""
    value = document.get(key)
    return default if value is None else value


def encode_infer_response(response: pb.ModelInferResponse, form: OutputForm) -> Body:
    """Each output as JSON ``data`` or as binary after the JSON, as ``form`` asks."""
    outputs, blobs = [], []
    for tensor, blob in zip(response.outputs, response.raw_output_contents, strict=True):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        entry.update(_parameter_values(tensor.parameters))
        if form.is_binary(tensor.name):
            entry["parameters"] = {**entry.get("parameters", {}), BINARY_SIZE: len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _raw_to_list(blob, tensor.datatype)
        outputs.append(entry)
    document = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    document.update(_parameter_values(response.parameters))
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)  # FP32: _raw_to_list
    if not blobs:
        return Body(header)
    return Body(b"".join([header, *blobs]), BINARY_TYPE, ((HEADER_LENGTH, str(len(header))),))


def _parameter_values(parameters) -> dict:
    if not parameters:
        return {}
    return {"parameters": {key: getattr(value, value.WhichOneof("parameter_choice"))
                           for key, value in parameters.items()
                           if value.WhichOneof("parameter_choice")}}


def _raw_to_list(blob: bytes, datatype: str) -> list | np.ndarray:
    if datatype == "FP32":  # orjson writes a float32 array's numbers in their shortest form
        # that reads back as the same float32: 0.1, not its double's 0.10000000149011612
        # (256 images' answer 52 KB, not 29: 76% more), and faster
        return np.frombuffer(blob, "<f4").astype(np.float32, copy=False)
    if datatype != "BYTES":
        return np.frombuffer(blob, dtype=NUMPY_TYPES[datatype]).tolist()
    values, offset = [], 0
    while offset < len(blob):
        (length,) = _LENGTH.unpack_from(blob, offset)
        values.append(blob[offset + 4:offset + 4 + length].decode(errors="replace"))
        offset += 4 + length
    return values
