"""``fragile``: a model that loads and answers, but whose run fails on some images (one whose
first pixel is grey), for the tests of a failed model run (test_stream_failed_runs.py,
test_triton_client.py); conftest's ``fragile_server`` serves it."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import tiny_classifier

BLACK, GREY = np.zeros((1, 28, 28), np.uint8), np.full((1, 28, 28), 128, np.uint8)


def fragile_classifier():
    """The fixture's tiny classifier plus a Gather whose index is 4000 * p * (1 - p) of each
    image's first pixel p in [0, 1]: 0 for black and white (the trial run's images: the
    version loads), out of its one-element table for grey, which onnxruntime refuses."""
    model = tiny_classifier(5)
    graph = model.graph
    gemm, softmax = (next(node for node in graph.node if node.op_type == op)
                     for op in ("Gemm", "Softmax"))
    features, logits, shifted = gemm.input[0], gemm.output[0], gemm.output[0] + "_shifted"
    softmax.input[0] = shifted
    graph.initializer.extend(numpy_helper.from_array(np.array(value, dtype), name) for value,
                             dtype, name in ((0, np.int64, "first"), (1.0, np.float32, "one"),
                                             (4000.0, np.float32, "scale"),
                                             ([0.0], np.float32, "table"), ([1], np.int64, "axis")))
    nodes = [("Gather", [features, "first"], "pixel", {"axis": 1}),
             ("Sub", ["one", "pixel"], "rest", {}), ("Mul", ["pixel", "rest"], "bump", {}),
             ("Mul", ["bump", "scale"], "scaled", {}),
             ("Cast", ["scaled"], "index", {"to": TensorProto.INT64}),
             ("Gather", ["table", "index"], "zeros", {}),
             ("Unsqueeze", ["zeros", "axis"], "column", {}),
             ("Add", [logits, "column"], shifted, {})]
    at = list(graph.node).index(softmax)
    for offset, (op, inputs, output, attributes) in enumerate(nodes):
        graph.node.insert(at + offset, helper.make_node(op, inputs, [output], **attributes))
    return model
