"""The Open Inference Protocol (KServe v2, with Triton's ModelConfig and ModelStatistics),
transport-free: resolve the model, decode, predict, encode. Methods take and return the
protocol's messages and a ``Call`` and raise ``serving.errors`` (a failed model run:
``serving.batching.BatchRunError``, which the pipeline answers INTERNAL; a stream, in its
request's place)."""

from collections.abc import Callable, Iterable, Iterator

from inference import grpc_service_pb2 as pb
from serving.batching import BatchRunError
from serving.codecs.inference import (
    EXTENSIONS,
    decode_infer_request,
    encode_infer_response,
    encode_model_config,
    encode_model_metadata,
    encode_statistics,
    parse_version,
)
from serving.errors import Cancelled, DeadlineExceeded, InvalidArgument, ServingError, Unavailable
from serving.metrics import model_statistics
from serving.pipeline import DRAINING_MESSAGE, Call, crashed
from serving.repository import ModelRegistry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "fashion-mnist-service"
FINAL_FLAG = "triton_final_response"
NAMED_BY = ("name", "version")  # the request's fields, which NotFound names (ModelInfer's differ)
INFER_NAMED_BY = ("model_name", "model_version")  # ModelInfer's (HTTP's infer names them too)


class InferenceAPI:
    def __init__(self, registry: ModelRegistry, max_request_images: int, server_version: str,
                 *, ready: Callable[[], bool] = lambda: True):
        """``ready``: False once the server drains, which it says before it refuses calls, so
        that balancers and probes turn away first."""
        self._registry = registry
        self._ready = ready
        self._max_request_images = max_request_images
        self._server_version = server_version

    def ServerLive(self, request, call: Call) -> pb.ServerLiveResponse:  # noqa: N802 (the protocol's name)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, call: Call) -> pb.ServerReadyResponse:  # noqa: N802 (the protocol's name)
        return pb.ServerReadyResponse(ready=self._ready())

    def ModelReady(self, request, call: Call) -> pb.ModelReadyResponse:  # noqa: N802 (the protocol's name)
        if not self._ready():  # as Triton's: UNAVAILABLE from the drain's first moment
            raise Unavailable(DRAINING_MESSAGE)
        # an unknown model or version is NOT_FOUND, as Triton's and KServe's: "ready: false"
        # kept a client that waits for a misspelt model waiting forever
        self._registry.get(request.name, parse_version(request.version), NAMED_BY)
        return pb.ModelReadyResponse(ready=True)  # every loaded version serves

    def ServerMetadata(self, request, call: Call) -> pb.ServerMetadataResponse:  # noqa: N802 (the protocol's name)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._server_version,
                                         extensions=EXTENSIONS)

    def ModelMetadata(self, request, call: Call) -> pb.ModelMetadataResponse:  # noqa: N802 (the protocol's name)
        model = self._registry.get(request.name, parse_version(request.version), NAMED_BY)
        versions = [model.version] if request.version else self._registry.versions(model.name)
        return encode_model_metadata(model, versions)  # as Triton's: the version asked for

    def ModelConfig(self, request, call: Call) -> pb.ModelConfigResponse:  # noqa: N802 (the protocol's name)
        model = self._registry.get(request.name, parse_version(request.version), NAMED_BY)
        return encode_model_config(model, self._max_request_images)

    def ModelStatistics(self, request, call: Call) -> pb.ModelStatisticsResponse:  # noqa: N802 (the protocol's name)
        """Every model if the name is "", every loaded version if the version is ""."""
        if request.version and not request.name:
            raise InvalidArgument("name: a version needs the model it belongs to, got none")
        version = parse_version(request.version)
        names = ([self._registry.get(request.name, version, NAMED_BY).name]
                 if request.name else self._registry.names)
        versions = ([(names[0], version)] if version else
                    [(name, number) for name in names for number in self._registry.versions(name)])
        return encode_statistics(model_statistics(versions))

    def ModelInfer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:  # noqa: N802 (the protocol's name)
        version = parse_version(request.model_version, "model_version")
        model = self._registry.get(request.model_name, version, INFER_NAMED_BY)
        query = decode_infer_request(request, model, self._max_request_images)
        return encode_infer_response(query, model, model.predict(query.images, call), request.id)

    def ModelStreamInfer(self, requests: Iterable[pb.ModelInferRequest], call: Call  # noqa: N802 (the protocol's name)
                         ) -> Iterator[pb.ModelStreamInferResponse]:
        """Answers in request order; a refused request is answered with its error, its ``id``,
        model name and version (as Triton's failed answers: a client multiplexing requests
        tells which failed), and the stream goes on, as Triton's does; so is a request whose
        model run failed, with ModelInfer's INTERNAL message (its traceback logged once, as the
        pipeline logs a crash): the requests behind it on the stream are not lost with it.
        Every answer, its request's one and final, says so in Triton's final flag, which
        streaming clients wait for. Bytes that do not parse end the stream, named by their
        place (as ClassifyStream's: the call pipeline parses them)."""
        for request in requests:
            try:
                answer = pb.ModelStreamInferResponse(infer_response=self.ModelInfer(request, call))
            except (Cancelled, DeadlineExceeded):
                raise  # the stream's end, not its request's
            except (ServingError, BatchRunError) as error:
                why = error if isinstance(error, ServingError) else crashed(call, error)
                asked = pb.ModelInferResponse(id=request.id, model_name=request.model_name,
                                              model_version=request.model_version)
                answer = pb.ModelStreamInferResponse(error_message=str(why), infer_response=asked)
            answer.infer_response.parameters[FINAL_FLAG].bool_param = True
            yield answer
