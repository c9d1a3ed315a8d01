"""The Classifier's domain logic, free of any transport: pick the model, answer with it and the
baseline. Raises only ``serving.errors`` for requests it refuses."""

import asyncio
from dataclasses import dataclass

import numpy as np

from serving.batching import on_event_loop
from serving.repository import ModelRegistry, ModelVersion, Prediction


@dataclass(frozen=True)
class Classification:
    """The requested model's and the baseline's answers for one batch, and who gave them."""

    model: ModelVersion
    model_prediction: Prediction
    baseline: ModelVersion
    baseline_prediction: Prediction


class ClassifierService:
    def __init__(self, registry: ModelRegistry, default_model: str, baseline_model: str):
        registry.require(default_model, baseline_model)
        self.registry = registry
        self.default_model = default_model
        self.baseline_model = baseline_model

    async def classify(self, images: np.ndarray, model: str = "", version: int = 0):
        """``uint8 [N,28,28]`` -> both answers; ``model`` "" is the default, ``version`` 0 the
        newest. On the event loop the two models run at the same time on the executor; on a
        front-door thread each prediction completes at once, so they run one after the other."""
        chosen = self.registry.get(model or self.default_model, version)
        baseline = self.registry.get(self.baseline_model)
        if on_event_loop():
            model_prediction, baseline_prediction = await asyncio.gather(
                chosen.predict(images), baseline.predict(images)
            )
        else:
            model_prediction = await chosen.predict(images)
            baseline_prediction = await baseline.predict(images)
        return Classification(chosen, model_prediction, baseline, baseline_prediction)

    def get_model(self, name: str, version: int = 0) -> ModelVersion:
        return self.registry.get(name, version)

    def list_models(self) -> list[ModelVersion]:
        return self.registry.list()

    def versions(self, name: str) -> list[int]:
        return self.registry.versions(name)

    def is_default_version(self, model: ModelVersion) -> bool:
        """Whether ``model`` answers requests naming no version (it is the newest)."""
        return model.version == self.registry.versions(model.name)[-1]
