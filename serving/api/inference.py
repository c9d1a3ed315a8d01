"""The Open Inference Protocol servicer (``inference.GRPCInferenceService``, KServe v2 with
Triton's ModelConfig and ModelStatistics): resolve the model, decode, predict, encode."""

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.api.errors import handle_errors
from serving.api.instrument import OTHER_MODEL, instrumented
from serving.codecs.inference import (
    EXTENSIONS,
    decode_infer_request,
    encode_infer_response,
    encode_model_config,
    encode_model_metadata,
    encode_statistics,
    parse_version,
)
from serving.errors import NotFound
from serving.metrics import model_statistics
from serving.repository import ModelRegistry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "fashion-mnist-service"
API = "v2"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, max_batch_size: int, server_version: str,
                 max_delay_s: float, instances: int):
        self._registry = registry
        self._max_batch_size = max_batch_size
        self._server_version = server_version
        self._max_delay_s = max_delay_s
        self._instances = instances

    def model_label(self, request) -> str:
        name = getattr(request, "model_name", None) or getattr(request, "name", "")
        return name if not name or name in self._registry.names else OTHER_MODEL

    @instrumented(API)
    @handle_errors
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:  # noqa: N802 (gRPC's name)
        return pb.ServerLiveResponse(live=True)

    @instrumented(API)
    @handle_errors
    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:  # noqa: N802 (gRPC's name)
        return pb.ServerReadyResponse(ready=True)  # draining servers refuse calls (Admission)

    @instrumented(API)
    @handle_errors
    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:  # noqa: N802 (gRPC's name)
        version = parse_version(request.version)
        try:
            self._registry.get(request.name, version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @instrumented(API)
    @handle_errors
    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:  # noqa: N802 (gRPC's name)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._server_version,
                                         extensions=EXTENSIONS)

    @instrumented(API)
    @handle_errors
    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:  # noqa: N802 (gRPC's name)
        model = self._registry.get(request.name, parse_version(request.version))
        return encode_model_metadata(model, self._registry.versions(model.name))

    @instrumented(API)
    @handle_errors
    async def ModelConfig(self, request, context) -> pb.ModelConfigResponse:  # noqa: N802 (gRPC's name)
        model = self._registry.get(request.name, parse_version(request.version))
        return encode_model_config(model, self._max_batch_size, self._max_delay_s,
                                   self._instances)

    @instrumented(API)
    @handle_errors
    async def ModelStatistics(self, request, context) -> pb.ModelStatisticsResponse:  # noqa: N802 (gRPC's name)
        """Every model if the name is "", every loaded version if the version is ""."""
        if request.name:
            names = [self._registry.get(request.name, parse_version(request.version)).name]
        else:
            names = self._registry.names
        if request.version:
            versions = [(names[0], parse_version(request.version))]
        else:
            versions = [(name, version) for name in names
                        for version in self._registry.versions(name)]
        return encode_statistics(model_statistics(versions))

    @instrumented(API)
    @handle_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:  # noqa: N802 (gRPC's name)
        model = self._registry.get(request.model_name, parse_version(request.model_version))
        query = decode_infer_request(request, model, self._max_batch_size)
        prediction = await model.predict(query.images)
        return encode_infer_response(query, model, prediction)
