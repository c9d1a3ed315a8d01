"""The one definition of the input preprocessing, in numpy and as an ONNX graph prefix.

Models are fitted on ``preprocess(images)``; the exported graphs start with the same operations
(Cast -> Div by 255 -> Reshape to 784), so a served model takes raw ``uint8 [N,28,28]`` images and
training and serving cannot drift apart.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from common.contract import IMAGE_SHAPE, IMAGES, PIXELS

PREPROCESSING = "x.astype(float32) / 255, flattened row-major to 784 values (inside the graph)"


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,784] in [0, 1]."""
    return images.reshape(len(images), PIXELS).astype(np.float32) / np.float32(255)


def preprocessing_graph(output_name: str, opset_imports: list, ir_version: int) -> onnx.ModelProto:
    """An ONNX model ``images: uint8 [N,28,28] -> output_name: float32 [N,784]``."""
    nodes = [
        helper.make_node("Cast", [IMAGES], ["pixels_f32"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["pixels_f32", "scale_255"], ["pixels_scaled"]),
        helper.make_node("Reshape", ["pixels_scaled", "flat_shape"], [output_name]),
    ]
    initializers = [
        helper.make_tensor("scale_255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, PIXELS]),
    ]
    graph = helper.make_graph(
        nodes,
        "preprocessing",
        [helper.make_tensor_value_info(IMAGES, TensorProto.UINT8, ["N", *IMAGE_SHAPE])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", PIXELS])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=opset_imports, ir_version=ir_version)


def prepend_preprocessing(model: onnx.ModelProto) -> onnx.ModelProto:
    """Returns ``model`` fed by the preprocessing prefix: its only input, float [N,784],
    becomes uint8 ``images``. The prefix takes the model's IR version and opset imports, which
    ``onnx.compose.merge_models`` requires."""
    model_input = model.graph.input[0].name
    bridge = "preprocessed_" + model_input
    prefix = preprocessing_graph(bridge, list(model.opset_import), model.ir_version)
    merged = onnx.compose.merge_models(prefix, model, io_map=[(bridge, model_input)])
    imports = {entry.domain: entry.version for entry in merged.opset_import}  # listed twice
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in imports.items())
    onnx.checker.check_model(merged)
    return merged
