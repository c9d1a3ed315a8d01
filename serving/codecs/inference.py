"""Open Inference Protocol (KServe v2 / Triton) messages <-> numpy, with all validation of
``ModelInferRequest``.

Input: one tensor ``images``, UINT8, shape ``[N,28,28]``, either in ``raw_input_contents``
(what tritonclient and perf_analyzer send) or in ``contents.uint_contents``; mixing the two is
refused, as the protocol says. Outputs: ``probabilities`` FP32 ``[N,classes]`` and ``label``
INT64 ``[N]``, all of them unless the request names some; a requested output with the Triton
``classification`` parameter (k) becomes BYTES ``[N,k]`` of ``"probability:index:class"``.
Answers are raw (``raw_output_contents``) whatever form the request's data came in, as
Triton's gRPC answers: tritonclient and Triton's own typed-input examples read them there.
"""

import json
import math
import struct
from dataclasses import asdict, dataclass

import numpy as np

from common.contract import IMAGE_SHAPE, LABEL, MAX_VERSION, PROBABILITIES, is_version_name
from inference import grpc_service_pb2 as pb
from inference import model_config_pb2 as config_pb
from serving.codecs.images import check_batch_size
from serving.errors import MAX_MESSAGE, InvalidArgument
from serving.metrics import ModelStatistics
from serving.repository import ModelVersion, Prediction

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Triton's gRPC and HTTP both answer its core's one list (in its order): binary_tensor_data too
EXTENSIONS = ("classification", "model_configuration", "binary_tensor_data", "statistics")
CLASSIFICATION = "classification"
CONFIG_TYPES = {"UINT8": config_pb.TYPE_UINT8, "FP32": config_pb.TYPE_FP32,
                "INT64": config_pb.TYPE_INT64}
_TensorMetadata = pb.ModelMetadataResponse.TensorMetadata
# an output -> the Prediction's attribute, its datatype, its wire dtype
_TENSORS = {PROBABILITIES: ("probabilities", "FP32", "<f4"), LABEL: ("labels", "INT64", "<i8")}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    class_count: int = 0  # > 0: Triton classification of this output


@dataclass(frozen=True)
class InferQuery:
    """A validated ModelInferRequest (its model is the ModelVersion it was validated for; its
    id is used as it is)."""

    images: np.ndarray  # uint8 [N,28,28]
    outputs: tuple[RequestedOutput, ...]


def parse_version(version: str, field: str = "version") -> int:
    """The protocol's version string ("" = the newest) -> the repository's integer (0 =
    newest); ``field`` names it in the request (ModelInferRequest's is model_version)."""
    if version == "":
        return 0
    # what Triton's std::stol reads (" +01" is 1: C's spaces, a sign, zeros), all of it: what
    # it would leave unread ("1 ", "1.5" are Triton's 1) may not be what was meant
    digits = version.lstrip(" \t\n\v\f\r").removeprefix("+")
    if not is_version_name(digits) or len(digits) > 19 or not 1 <= int(digits) <= MAX_VERSION:
        raise InvalidArgument(f"{field}: expected \"\" (the newest) or an integer from 1 "
                              f"to 2**63-1, got {version[:40]!r}")
    return int(digits)


def decode_infer_request(request: pb.ModelInferRequest, model: ModelVersion,
                         max_request_images: int) -> InferQuery:
    """Checks the request against the model's one input and its outputs."""
    expected_input = model.manifest.inputs[0]
    if len(request.inputs) != 1 or request.inputs[0].name != expected_input.name:
        # (of many, the first MAX_MESSAGE fill all a message shows: never copied whole)
        names = [tensor.name for tensor in request.inputs[:MAX_MESSAGE]]
        raise InvalidArgument(f"inputs: expected one input {expected_input.name!r}, got {names}")
    tensor = request.inputs[0]
    field = f"inputs[{tensor.name!r}]"
    if len(request.outputs) > len(model.manifest.outputs):  # one is unknown or asked twice:
        _requested_outputs(request, model)  # said now, never each of 300,000 looked at
    for name, where in ((field, tensor), *((f"outputs[{o.name!r}]", o) for o in request.outputs)):
        if any(key.startswith("shared_memory") for key in where.parameters):  # would go unread
            raise InvalidArgument(f"{name}.parameters: shared memory is not served here")
    if tensor.datatype != expected_input.datatype:
        raise InvalidArgument(
            f"{field}.datatype: expected {expected_input.datatype}, got {tensor.datatype!r}")
    shape = tuple(tensor.shape[:MAX_MESSAGE])
    if len(shape) != 3 or shape[1:] != IMAGE_SHAPE or shape[0] < 0:
        raise InvalidArgument(f"{field}.shape: expected [N,28,28], got {list(shape)}")
    check_batch_size(shape[0], max_request_images, field)  # before its data is looked at
    raw = len(request.raw_input_contents) > 0
    pixels = _raw_pixels(request, tensor, field) if raw else _typed_pixels(tensor, field)
    expected_size = math.prod(shape)
    if pixels.size != expected_size:
        raise InvalidArgument(
            f"{field}: shape {list(shape)} needs {expected_size} UINT8 values, "
            f"got {pixels.size}")
    return InferQuery(pixels.reshape(shape), _requested_outputs(request, model))


def _raw_pixels(request: pb.ModelInferRequest, tensor, field: str) -> np.ndarray:
    if tensor.HasField("contents"):
        raise InvalidArgument(
            f"{field}: data given both in contents and in raw_input_contents; use one")
    if len(request.raw_input_contents) != 1:
        raise InvalidArgument(
            f"raw_input_contents: expected 1 entry (one per input), "
            f"got {len(request.raw_input_contents)}")
    return np.frombuffer(request.raw_input_contents[0], dtype=np.uint8)


def _typed_pixels(tensor, field: str) -> np.ndarray:
    contents = tensor.contents
    other = [descriptor.name for descriptor, _ in contents.ListFields()
             if descriptor.name != "uint_contents"]
    if other:
        raise InvalidArgument(
            f"{field}.contents: UINT8 data goes in uint_contents, got {', '.join(other)}")
    if not contents.uint_contents:
        raise InvalidArgument(
            f"{field}: no data (expected raw_input_contents or contents.uint_contents)")
    values = np.array(contents.uint_contents, dtype=np.uint32)
    if values.max() > 255:
        raise InvalidArgument(f"{field}.contents.uint_contents: UINT8 values are 0..255, "
                              f"got {int(values.max())}")
    return values.astype(np.uint8)


def _requested_outputs(request: pb.ModelInferRequest, model: ModelVersion):
    known = {spec.name for spec in model.manifest.outputs}
    if not request.outputs:
        return tuple(RequestedOutput(spec.name) for spec in model.manifest.outputs)
    outputs = []
    for output in request.outputs:
        field = f"outputs[{output.name!r}]"
        if output.name not in known:
            raise InvalidArgument(
                f"{field}: model {model.name!r} has no such output; it has {sorted(known)}")
        if output.name in (requested.name for requested in outputs):
            raise InvalidArgument(f"{field}: requested twice")
        outputs.append(RequestedOutput(output.name, _class_count(output, field, model)))
    return tuple(outputs)


def _class_count(output, field: str, model: ModelVersion) -> int:
    if CLASSIFICATION not in output.parameters:
        return 0
    parameter = output.parameters[CLASSIFICATION]
    choice = parameter.WhichOneof("parameter_choice")
    if choice != "int64_param" or parameter.int64_param < 1:
        # as the client wrote it (JSON), not in protobuf's text format (`string_param: "2"`)
        given = json.dumps(getattr(parameter, choice) if choice else None)[:40]
        raise InvalidArgument(f"{field}.parameters[{CLASSIFICATION!r}]: expected int64 >= 1, "
                              f"got {given}{' (a string)' if choice == 'string_param' else ''}")
    if output.name != PROBABILITIES:
        raise InvalidArgument(f"{field}: classification applies to {PROBABILITIES!r} only")
    return min(int(parameter.int64_param), len(model.manifest.class_names))


def encode_infer_response(query: InferQuery, model: ModelVersion,
                          prediction: Prediction, request_id: str) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                     id=request_id)
    for output in query.outputs:
        if output.class_count:
            _add_classification(response, output, prediction, model.manifest.class_names)
        else:
            _add_tensor(response, output.name, prediction)
    return response


def _add_tensor(response, name: str, prediction: Prediction) -> None:
    attribute, datatype, dtype = _TENSORS[name]
    array = np.ascontiguousarray(getattr(prediction, attribute), dtype=dtype)
    response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    response.raw_output_contents.append(array.tobytes())


def _add_classification(response, output: RequestedOutput, prediction: Prediction,
                        class_names: tuple[str, ...]) -> None:
    """Triton's classification extension: per image the top k ``"probability:index:class"``,
    best first."""
    probabilities = prediction.probabilities
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :output.class_count]
    entries = [f"{probabilities[row, index]:f}:{index}:{class_names[index]}".encode()
               for row, indexes in enumerate(top.tolist()) for index in indexes]
    response.outputs.add(name=output.name, datatype="BYTES", shape=top.shape)
    response.raw_output_contents.append(  # Triton's BYTES: each a 4-byte length, then it
        b"".join(struct.pack("<I", len(entry)) + entry for entry in entries))


def encode_model_metadata(model: ModelVersion, versions: list[int]) -> pb.ModelMetadataResponse:
    manifest = model.manifest
    return pb.ModelMetadataResponse(
        name=manifest.name, versions=[str(version) for version in versions], platform=PLATFORM,
        inputs=[_TensorMetadata(**asdict(spec)) for spec in manifest.inputs],
        outputs=[_TensorMetadata(**asdict(spec)) for spec in manifest.outputs])


def encode_model_config(model: ModelVersion, max_request_images: int) -> pb.ModelConfigResponse:
    """Triton's view of the model: batched along the first dimension, dims without it, as its
    batcher runs it (``model.policy``)."""
    manifest, policy = model.manifest, model.policy
    return pb.ModelConfigResponse(config=config_pb.ModelConfig(
        name=manifest.name, platform=PLATFORM, backend=BACKEND,
        version_policy=config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All()),
        max_batch_size=max_request_images,
        input=[config_pb.ModelInput(name=s.name, data_type=CONFIG_TYPES[s.datatype],
                                    dims=s.shape[1:]) for s in manifest.inputs],
        output=[config_pb.ModelOutput(name=s.name, data_type=CONFIG_TYPES[s.datatype],
                                      dims=s.shape[1:]) for s in manifest.outputs],
        dynamic_batching=config_pb.ModelDynamicBatching(
            max_queue_delay_microseconds=round(policy.max_delay_s * 1e6), preserve_ordering=True),
        instance_group=[config_pb.ModelInstanceGroup(
            count=policy.max_parallel, kind=config_pb.ModelInstanceGroup.KIND_CPU)]))


def encode_statistics(statistics: list[ModelStatistics]) -> pb.ModelStatisticsResponse:
    """Triton's statistics; compute_input/infer/output all count the successful predictions
    (perf_analyzer requires equal counts): input and output conversion happen outside the
    model call and are reported as 0 ns. cache_hit and cache_miss are set, at 0, so that
    clients reading Triton's schema find them (this service has no response cache).
    ``batch_stats``, as Triton's: per batch size (images per onnxruntime call), the calls and
    their time, counted once in each of compute_input/infer/output (input and output: 0 ns)."""
    return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(
        name=stats.name, version=str(stats.version),
        last_inference=int(stats.last_inference_s * 1000),
        inference_count=int(stats.inference_count), execution_count=int(stats.execution_count),
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success.count, stats.success.seconds),
            fail=_duration(stats.fail.count, stats.fail.seconds),
            queue=_duration(stats.success.count, stats.queue_seconds),
            compute_input=_duration(stats.success.count, 0.0),
            compute_infer=_duration(stats.success.count, stats.compute_seconds),
            compute_output=_duration(stats.success.count, 0.0),
            cache_hit=pb.StatisticDuration(), cache_miss=pb.StatisticDuration(),  # no cache
        ), batch_stats=[pb.InferBatchStatistics(
            batch_size=size, compute_input=_duration(run.count, 0.0),
            compute_infer=_duration(run.count, run.seconds),
            compute_output=_duration(run.count, 0.0)) for size, run in sorted(stats.calls.items())],
    ) for stats in statistics])


def _duration(count: int, seconds: float) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=int(count), ns=round(seconds * 1e9))
