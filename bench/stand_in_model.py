"""Write a stand-in model repository for benchmarks: a 784-512-10 MLP with random weights.

Benchmarks measure serving cost, not accuracy, so a model of the real size and signature
(uint8 ``images`` [N,28,28] in; ``probabilities`` [N,10] and ``label`` [N] out, with the
project's in-graph preprocessing) is a fair stand-in that needs no training run.

Usage: ``python bench/stand_in_model.py --out .work/bench/models`` writes
``<out>/<name>/1/model.onnx`` (+ model.json) for each ``--names`` entry that has no version yet.
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.contract import CLASS_NAMES, PIXELS
from training.preprocessing import prepend_preprocessing
from training.repository import existing_versions, write_version

HIDDEN = 512
OPSET = 17
IR_VERSION = 8


def mlp(seed: int = 0) -> onnx.ModelProto:
    """A float [N,784] -> (probabilities, label) MLP with random He-scaled weights."""
    rng = np.random.default_rng(seed)
    classes = len(CLASS_NAMES)
    weights = {
        "w1": rng.normal(0, np.sqrt(2 / PIXELS), (PIXELS, HIDDEN)).astype(np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": rng.normal(0, np.sqrt(2 / HIDDEN), (HIDDEN, classes)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["pixels", "w1", "b1"], ["hidden_linear"]),
        helper.make_node("Relu", ["hidden_linear"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "stand_in_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", PIXELS])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    return prepend_preprocessing(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model repository root")
    parser.add_argument("--names", nargs="+", default=["mlp", "softmax", "baseline"],
                        help="model names to write (default: %(default)s)")
    args = parser.parse_args()
    model = mlp()
    for name in args.names:
        if existing_versions(args.out, name):
            print(f"{name}: already present under {args.out / name}")
            continue
        manifest = {"description": "benchmark stand-in: 784-512-10 MLP, random weights"}
        print(f"{name}: wrote {write_version(args.out, name, model, manifest)}")


if __name__ == "__main__":
    main()
