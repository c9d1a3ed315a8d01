"""The exported ONNX graphs: the repository contract, and the same answers as Keras/sklearn."""

import numpy as np
import onnx
import onnxruntime
import pytest

from common.contract import IMAGES
from training import data, export, models
from training.preprocessing import preprocess
from training.repository import OUTPUTS

SUBSET = 3000


@pytest.fixture(scope="module")
def dataset() -> data.Dataset:
    return data.load(data.DEBIAN_DIR)


@pytest.fixture(scope="module")
def fitted(dataset):
    """The three models fitted briefly on a subset, with their ONNX exports."""
    x_train, x_val, y_train, y_val = data.split_train_validation(
        preprocess(dataset.x_train[:SUBSET]), dataset.y_train[:SUBSET]
    )
    keras_settings = {
        "softmax": models.KerasSettings(epochs=2),
        "mlp": models.KerasSettings(hidden=(64, 32), dropout=0.2, batch_norm=True, epochs=2),
    }
    result = {}
    for name, settings in keras_settings.items():
        models.seed_everything(0)
        model = models.fit_keras(settings, x_train, y_train, x_val, y_val, verbose=0).model
        result[name] = (model, export.keras_to_onnx(model))
    baseline = models.fit_baseline(models.BaselineSettings(max_iter=5), x_train, y_train, 0)
    result["baseline"] = (baseline.model, export.baseline_to_onnx(baseline.model))
    return result


@pytest.mark.parametrize("name", ["softmax", "mlp", "baseline"])
def test_graph_has_the_repository_signature(fitted, name):
    graph = fitted[name][1].graph
    (image_input,) = graph.input
    assert image_input.name == IMAGES
    assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in image_input.type.tensor_type.shape.dim][1:] == [28, 28]
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    assert outputs == {"probabilities": onnx.TensorProto.FLOAT, "label": onnx.TensorProto.INT64}
    assert not any(node.op_type == "ZipMap" for node in graph.node)
    domains = [entry.domain for entry in fitted[name][1].opset_import]
    assert len(domains) == len(set(domains)), domains  # onnx's merge_models listed each twice


@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_keras_graphs_match_keras_on_the_test_set(fitted, dataset, name):
    model, onnx_model = fitted[name]
    probabilities, labels = export.run_onnx(onnx_model, dataset.x_test)
    expected = model.predict(preprocess(dataset.x_test), batch_size=1024, verbose=0)
    assert probabilities.shape == (10000, 10)
    assert probabilities.dtype == np.float32
    assert labels.dtype == np.int64
    assert np.max(np.abs(probabilities - expected)) <= 1e-5
    assert np.array_equal(labels, expected.argmax(axis=1))


def test_baseline_graph_matches_predict_proba(fitted, dataset):
    classifier, onnx_model = fitted["baseline"]
    probabilities, labels = export.run_onnx(onnx_model, dataset.x_test)
    expected = classifier.predict_proba(preprocess(dataset.x_test))
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert np.mean(labels == classifier.predict(preprocess(dataset.x_test))) >= 0.999


@pytest.mark.parametrize("name", ["softmax", "mlp", "baseline"])
def test_in_graph_preprocessing_equals_python_bit_for_bit(fitted, dataset, name):
    """Exposes the exported graph's own preprocessed tensor and compares it with preprocess()."""
    onnx_model = onnx.ModelProto()
    onnx_model.CopyFrom(fitted[name][1])
    (preprocessed,) = [
        output
        for node in onnx_model.graph.node
        for output in node.output
        if output.startswith("preprocessed_")
    ]
    onnx_model.graph.output.append(onnx.ValueInfoProto(name=preprocessed))
    every_value = np.resize(np.arange(256, dtype=np.uint8), (2, 28, 28))
    images = np.concatenate([every_value, dataset.x_test[:200]])
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString())
    (pixels,) = session.run([preprocessed], {IMAGES: images})
    assert pixels.dtype == np.float32
    assert np.array_equal(pixels.view(np.uint32), preprocess(images).view(np.uint32))


def test_the_same_baseline_exports_to_the_same_bytes(fitted):
    """skl2onnx named the graph after a fresh uuid: the same model got another sha256 on every
    run, and a repository could not tell a retrained baseline from the same one."""
    baseline, _ = fitted["baseline"]
    first, second = (export.baseline_to_onnx(baseline).SerializeToString() for _ in range(2))
    assert first == second


@pytest.mark.parametrize("name", ["softmax", "mlp", "baseline"])
def test_outputs_come_in_model_json_order(fitted, dataset, name):
    """The baseline's graph listed label before probabilities, the Keras ones and model.json
    probabilities first: `probabilities, label = session.run(None, ...)` swapped them for it."""
    graph = fitted[name][1].graph
    assert [o.name for o in graph.output] == [o["name"] for o in OUTPUTS]
    session = onnxruntime.InferenceSession(fitted[name][1].SerializeToString())
    probabilities, label = session.run(None, {IMAGES: dataset.x_test[:5]})
    assert probabilities.shape == (5, 10) and label.shape == (5,)
