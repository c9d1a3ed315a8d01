"""Exports the fitted models to ONNX graphs taking raw images, in the repository's contract.

Every graph takes ``images: uint8 [N,28,28]`` (the preprocessing is merged in front by
``training.preprocessing.prepend_preprocessing``) and returns ``probabilities: float32 [N,10]``
and ``label: int64 [N]``.
"""

import numpy as np
import onnx
from onnx import helper

from common.contract import IMAGES, LABEL, NUM_CLASSES, PIXELS, PROBABILITIES
from training.preprocessing import prepend_preprocessing

OPSET = 17  # the default ONNX opset of both converters' outputs; onnxruntime >= 1.14 runs it
ML_OPSET = 3  # ai.onnx.ml, used by the scikit-learn graph


def with_probabilities_and_label(model: onnx.ModelProto) -> onnx.ModelProto:
    """Names a Keras graph's only output ``probabilities`` and adds ``label = ArgMax``."""
    graph = model.graph
    (output,) = graph.output
    graph.node.extend(
        [
            helper.make_node("Identity", [output.name], [PROBABILITIES]),
            helper.make_node("ArgMax", [output.name], [LABEL], axis=1, keepdims=0),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(
                PROBABILITIES, onnx.TensorProto.FLOAT, ["N", NUM_CLASSES]
            ),
            helper.make_tensor_value_info(LABEL, onnx.TensorProto.INT64, ["N"]),
        ]
    )
    return model


def keras_to_onnx(model) -> onnx.ModelProto:
    """tf2onnx through a ``tf.function`` with an explicit signature: ``from_keras`` fails on
    Keras 3 models (``KeyError: 'keras_tensor_N'``)."""
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec([None, PIXELS], tf.float32, name="pixels")]
    function = tf.function(lambda pixels: model(pixels, training=False), input_signature=signature)
    converted, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    # "converted from b'__inference_<lambda>_2775'": a counter of the process's tf.functions,
    # which made the same model another file (another sha256) after another model of the run
    converted.graph.doc_string = "converted by tf2onnx from the fitted Keras model"
    return prepend_preprocessing(with_probabilities_and_label(converted))


def baseline_to_onnx(classifier) -> onnx.ModelProto:
    """skl2onnx without the ZipMap, so ``probabilities`` is a plain float tensor; the graph is
    named (skl2onnx's default is a fresh uuid: the same model would get another sha256)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    converted = convert_sklearn(
        classifier,
        name="baseline",
        initial_types=[("pixels", FloatTensorType([None, PIXELS]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    # skl2onnx lists label first: put probabilities first, as the Keras graphs and model.json do
    outputs = sorted(converted.graph.output, key=lambda output: output.name != PROBABILITIES)
    del converted.graph.output[:]
    converted.graph.output.extend(outputs)
    return prepend_preprocessing(converted)


def framework_versions(model: onnx.ModelProto, libraries: tuple[str, ...]) -> dict[str, str]:
    """Versions of the libraries that made ``model`` plus its opsets, for the manifest."""
    import importlib.metadata

    versions = {name: importlib.metadata.version(name) for name in ("onnx", *libraries)}
    opsets = {f"opset {o.domain or 'ai.onnx'}": str(o.version) for o in model.opset_import}
    return versions | opsets | {"ir_version": str(model.ir_version)}


def run_onnx(model: onnx.ModelProto, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``model`` on uint8 images with onnxruntime -> (probabilities, label)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    probabilities, labels = session.run([PROBABILITIES, LABEL], {IMAGES: images})
    return probabilities, labels
