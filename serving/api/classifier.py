"""The domain API (``fashion_mnist.v1.Classifier``), transport-free: every answer carries the
requested model's and the baseline's predictions. Methods take and return the protocol's
messages and a ``Call``; they block while their batch is computed and raise ``serving.errors``
(a failed model run: ``serving.batching.BatchRunError``, which the pipeline answers INTERNAL)."""

from collections.abc import Iterable, Iterator

from fashion_mnist.v1 import classifier_pb2 as pb
from serving.codecs.classifier import (
    Classification,
    check_version,
    decode_classify_request,
    encode_classify_response,
    encode_model_info,
)
from serving.errors import ServingError
from serving.pipeline import Call
from serving.repository import ModelRegistry, ModelVersion

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name


class ClassifierAPI:
    def __init__(self, registry: ModelRegistry, default_model: str, baseline_model: str,
                 max_request_images: int):
        registry.require(default_model, baseline_model)
        self.registry = registry
        self.default_model = default_model
        self.baseline_model = baseline_model
        self._max_request_images = max_request_images

    def Classify(self, request: pb.ClassifyRequest, call: Call) -> pb.ClassifyResponse:  # noqa: N802 (the protocol's name)
        images = decode_classify_request(request, self._max_request_images)
        chosen = self.registry.get(request.model or self.default_model, request.version)
        baseline = self.registry.get(self.baseline_model)
        answer = Classification(chosen, chosen.predict(images, call),
                                baseline, baseline.predict(images, call))
        return encode_classify_response(answer, request.request_id)

    def ClassifyStream(self, requests: Iterable[pb.ClassifyRequest], call: Call  # noqa: N802 (the protocol's name)
                       ) -> Iterator[pb.ClassifyResponse]:
        """Answers in request order; the first refused request ends the stream with an error
        that names it (its position, and its request_id), so no client has to count; one whose
        bytes do not parse is named by its position by the call pipeline, which parses them."""
        for index, request in enumerate(requests):
            try:
                yield self.Classify(request, call)
            except ServingError as error:
                named = f" ({request.request_id!r})" if request.request_id else ""
                raise type(error)(f"request {index}{named}: {error}") from error

    def ListModels(self, request: pb.ListModelsRequest, call: Call) -> pb.ListModelsResponse:  # noqa: N802 (the protocol's name)
        return pb.ListModelsResponse(models=[self._info(m) for m in self.registry.list()])

    def GetModel(self, request: pb.GetModelRequest, call: Call) -> pb.ModelInfo:  # noqa: N802 (the protocol's name)
        check_version(request.version)
        return self._info(self.registry.get(request.name, request.version, ("name", "version")))

    def _info(self, model: ModelVersion) -> pb.ModelInfo:
        versions = self.registry.versions(model.name) or [model.version]  # unloaded meanwhile
        return encode_model_info(model, versions, model.version == versions[-1])
