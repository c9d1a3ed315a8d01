"""The Open Inference Protocol (KServe v2, with Triton's ModelConfig and ModelStatistics),
transport-free: resolve the model, decode, predict, encode. Methods take and return the
protocol's messages and a ``Call`` and raise only ``serving.errors``."""

from collections.abc import Callable

from inference import grpc_service_pb2 as pb
from serving.codecs.inference import (
    EXTENSIONS,
    decode_infer_request,
    encode_infer_response,
    encode_model_config,
    encode_model_metadata,
    encode_statistics,
    parse_version,
)
from serving.errors import InvalidArgument, NotFound
from serving.metrics import model_statistics
from serving.pipeline import Call
from serving.repository import ModelRegistry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "fashion-mnist-service"


class InferenceAPI:
    def __init__(self, registry: ModelRegistry, max_request_images: int, server_version: str,
                 max_delay_s: float, instances: int, *,
                 ready: Callable[[], bool] = lambda: True):
        """``ready``: False once the server drains, which it says before it refuses calls, so
        that balancers and probes turn away first."""
        self._registry = registry
        self._ready = ready
        self._max_request_images = max_request_images
        self._server_version = server_version
        self._max_delay_s = max_delay_s
        self._instances = instances

    def ServerLive(self, request, call: Call) -> pb.ServerLiveResponse:  # noqa: N802 (the protocol's name)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, call: Call) -> pb.ServerReadyResponse:  # noqa: N802 (the protocol's name)
        return pb.ServerReadyResponse(ready=self._ready())

    def ModelReady(self, request, call: Call) -> pb.ModelReadyResponse:  # noqa: N802 (the protocol's name)
        version = parse_version(request.version)
        try:
            self._registry.get(request.name, version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, call: Call) -> pb.ServerMetadataResponse:  # noqa: N802 (the protocol's name)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._server_version,
                                         extensions=EXTENSIONS)

    def ModelMetadata(self, request, call: Call) -> pb.ModelMetadataResponse:  # noqa: N802 (the protocol's name)
        model = self._registry.get(request.name, parse_version(request.version))
        return encode_model_metadata(model, self._registry.versions(model.name))

    def ModelConfig(self, request, call: Call) -> pb.ModelConfigResponse:  # noqa: N802 (the protocol's name)
        model = self._registry.get(request.name, parse_version(request.version))
        return encode_model_config(model, self._max_request_images, self._max_delay_s,
                                   self._instances)

    def ModelStatistics(self, request, call: Call) -> pb.ModelStatisticsResponse:  # noqa: N802 (the protocol's name)
        """Every model if the name is "", every loaded version if the version is ""."""
        if request.version and not request.name:
            raise InvalidArgument("name: a version needs the model it belongs to, got none")
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

    def ModelInfer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:  # noqa: N802 (the protocol's name)
        model = self._registry.get(request.model_name, parse_version(request.model_version))
        query = decode_infer_request(request, model, self._max_request_images)
        return encode_infer_response(query, model, model.predict(query.images, call))
