"""The server refusing a model version that loads but cannot be vouched for: one that fails
or answers nonsense on a trial run, or whose classes are not the contract's."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import REGISTRY

from serving.repository import load_repository
from training.preprocessing import prepend_preprocessing
from training.repository import write_version


def classifier_ending(tail: list, initializers: list) -> onnx.ModelProto:
    """The fixture's signature (uint8 images in, ``probabilities`` and ``label`` out) with
    ``tail`` turning float ``features [N,784]`` into them."""
    graph = helper.make_graph(
        tail, "tail", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])], initializers)
    return prepend_preprocessing(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


BROKEN_WHEN_RUN = {
    "fails": ([helper.make_node("Reshape", ["features", "783"], ["flat"]),  # 784 does not fit
               helper.make_node("Gemm", ["flat", "weights"], ["logits"]),
               helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
               helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
              [numpy_helper.from_array(np.array([-1, 783]), "783"),
               numpy_helper.from_array(np.zeros((783, 10), np.float32), "weights")],
              "a trial run on 2 images failed: "),
    "answers NaN": ([helper.make_node("Gemm", ["features", "weights"], ["logits"]),
                     helper.make_node("Div", ["logits", "logits"], ["probabilities"]),  # 0/0
                     helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
                    [numpy_helper.from_array(np.zeros((784, 10), np.float32), "weights")],
                    "a trial run on 2 images answered a probability of nan, not finite"),
    "answers logits": ([helper.make_node("Gemm", ["features", "weights", "bias"], ["logits"]),
                        helper.make_node("Identity", ["logits"], ["probabilities"]),  # no Softmax
                        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
                       [numpy_helper.from_array(np.zeros((784, 10), np.float32), "weights"),
                        numpy_helper.from_array(np.arange(10, dtype=np.float32), "bias")],
                       "a trial run on 2 images answered probabilities whose rows sum to "
                       "[45.0, 45.0], not 1"),
    "labels no class": ([helper.make_node("Gemm", ["features", "weights", "bias"], ["logits"]),
                         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
                         helper.make_node("ArgMax", ["logits"], ["best"], axis=1, keepdims=0),
                         helper.make_node("Add", ["best", "ten"], ["label"])],  # 10..19
                        [numpy_helper.from_array(np.zeros((784, 10), np.float32), "weights"),
                         numpy_helper.from_array(np.zeros(10, np.float32), "bias"),
                         numpy_helper.from_array(np.array(10), "ten")],
                        "a trial run on 2 images answered labels [10, 10], not class "
                        "numbers 0..9"),
}


@pytest.mark.parametrize("broken", BROKEN_WHEN_RUN)
def test_a_version_that_loads_but_cannot_answer_is_refused(repository_copy, policy, broken):
    """Its graph loaded and had the right signature, so it became the newest version, and
    every call naming no version failed INTERNAL: it is run once before it serves."""
    tail, initializers, reason = BROKEN_WHEN_RUN[broken]
    write_version(repository_copy, "mlp", classifier_ending(tail, initializers),
                  {"description": broken, "metrics": {}})
    registry = load_repository(repository_copy, policy)
    assert reason in registry.refused[("mlp", 3)]
    assert registry.get("mlp").version == 2
    for model in registry.list():  # their fmnist_model_info series back to 0, as others expect
        registry.remove(model.name, model.version)


def test_a_version_whose_classes_are_not_the_contracts_is_refused(repository_copy, policy):
    """Renamed classes were served: /v1/classify named one label two ways (its class_name
    from model.json, its top k from the contract), and model.json's sha256 covers no class."""
    manifest = repository_copy / "mlp" / "2" / "model.json"
    document = json.loads(manifest.read_text())
    document["classes"] = [f"class-{label}" for label in range(10)]
    manifest.write_text(json.dumps(document))
    registry = load_repository(repository_copy, policy)
    assert "classes ['class-0', " in registry.refused[("mlp", 2)]
    assert "expected Fashion-MNIST's in label order" in registry.refused[("mlp", 2)]
    assert REGISTRY.get_sample_value("fmnist_model_info", {
        "model": "mlp", "version": "2", "sha256": document["sha256"][:12]}) in (None, 0)
