"""The fashion_mnist.v1.Classifier servicer: decode, ask the service, encode."""

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from serving.api.errors import handle_errors
from serving.api.instrument import OTHER_MODEL, instrumented
from serving.api.streams import map_ordered
from serving.codecs.classifier import (
    check_version,
    decode_classify_request,
    encode_classify_response,
    encode_model_info,
)
from serving.service import ClassifierService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(self, service: ClassifierService, max_batch_size: int, stream_window: int):
        self._service = service
        self._max_batch_size = max_batch_size
        self._stream_window = stream_window

    def model_label(self, request) -> str:
        """The metrics' model label: the model asked for, "" being the default."""
        name = getattr(request, "model", None) or getattr(request, "name", "")
        if not name and isinstance(request, pb.ClassifyRequest):
            name = self._service.default_model
        return name if not name or name in self._service.registry.names else OTHER_MODEL

    @instrumented("domain")
    @handle_errors
    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:  # noqa: N802 (gRPC's name)
        return await self._classify(request)

    @handle_errors
    async def ClassifyStream(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        """Answers in request order, classifying up to ``stream_window`` batches at a time."""
        async for response in map_ordered(request_iterator, self._classify, self._stream_window):
            yield response

    @instrumented("domain")
    @handle_errors
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:  # noqa: N802 (gRPC's name)
        return pb.ListModelsResponse(
            models=[self._model_info(model) for model in self._service.list_models()]
        )

    @instrumented("domain")
    @handle_errors
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:  # noqa: N802 (gRPC's name)
        check_version(request.version)
        return self._model_info(self._service.get_model(request.name, request.version))

    async def _classify(self, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
        query = decode_classify_request(request, self._max_batch_size)
        answer = await self._service.classify(query.images, query.model, query.version)
        return encode_classify_response(answer, query.request_id)

    def _model_info(self, model) -> pb.ModelInfo:
        return encode_model_info(
            model, self._service.versions(model.name), self._service.is_default_version(model)
        )

