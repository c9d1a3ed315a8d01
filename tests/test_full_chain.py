"""The whole chain on a small training subset: fit -> ONNX -> repository -> server -> client.

Keras == ONNX == served probabilities, and the served baseline == scikit-learn's
``predict_proba``; and the real ``fmnist-train`` output serves at its recorded accuracy.
Slow (about a minute or two): ``pytest -m full_chain``.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from serving.client import cli
from serving.client.api import ClassifierClient
from tests.conftest import local_settings, running_server

pytestmark = pytest.mark.full_chain

TRAIN_SUBSET = 3000
EPOCHS = 2
IMAGES = 1000  # test images classified through the server


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Fits the three models in-process with the training API and writes their ONNX export
    into a repository; returns (repository, {name: fitted model})."""
    from training import data, export, models
    from training.preprocessing import preprocess
    from training.repository import write_version

    dataset = data.load()
    x_train, x_val, y_train, y_val = data.split_train_validation(
        dataset.x_train[:TRAIN_SUBSET], dataset.y_train[:TRAIN_SUBSET], 0.2, 42
    )
    pixels_train, pixels_val = preprocess(x_train), preprocess(x_val)
    root = tmp_path_factory.mktemp("trained")
    fitted_models = {}
    for name, settings in (("softmax", models.SOFTMAX_DEFAULTS), ("mlp", models.MLP_DEFAULTS)):
        models.seed_everything(42)
        short = dataclasses.replace(settings, epochs=EPOCHS, patience=0)
        model = models.fit_keras(short, pixels_train, y_train, pixels_val, y_val, verbose=0).model
        write_version(root, name, export.keras_to_onnx(model), {"description": short.describe()})
        fitted_models[name] = model
    baseline = models.fit_baseline(models.BaselineSettings(), pixels_train, y_train, 42).model
    write_version(root, "baseline", export.baseline_to_onnx(baseline), {})
    fitted_models["baseline"] = baseline
    return root, fitted_models


def test_served_probabilities_equal_keras_and_scikit_learn(fitted, test_set):
    from training.preprocessing import preprocess

    root, fitted_models = fitted
    images = test_set[0][:IMAGES]
    pixels = preprocess(images)
    settings = local_settings(model_repository=root, parallel_inferences=2)
    with running_server(settings) as server, ClassifierClient(
            f"127.0.0.1:{server.port}") as client:
        answers = {name: client.classify(images, model=name) for name in ("softmax", "mlp")}
    baseline_probabilities = fitted_models["baseline"].predict_proba(pixels)
    for name, answer in answers.items():
        keras_probabilities = fitted_models[name].predict(pixels, batch_size=1024, verbose=0)
        np.testing.assert_allclose(answer.model.probabilities, keras_probabilities, atol=1e-5)
        np.testing.assert_array_equal(answer.model.labels, keras_probabilities.argmax(axis=1))
        np.testing.assert_allclose(answer.baseline.probabilities, baseline_probabilities,
                                   atol=1e-5)
        agreement = np.mean(answer.baseline.labels == baseline_probabilities.argmax(axis=1))
        assert agreement >= 0.999  # a near tie may flip between float32 and float64


def test_fmnist_train_output_serves_at_its_recorded_accuracy(tmp_path, test_set):
    repository = tmp_path / "repository"
    trained = subprocess.run(
        [sys.executable, "-m", "training", "--out", str(repository),
         "--train-subset", str(TRAIN_SUBSET), "--epochs", str(EPOCHS), "--progress", "none"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    for name in ("softmax", "mlp"):
        manifest = json.loads((repository / name / "1" / "model.json").read_text())
        assert manifest["metrics"]["onnx_max_abs_diff"] < 1e-5  # Keras vs ONNX, at training

    settings = local_settings(model_repository=repository,
                        parallel_inferences=2)
    with running_server(settings) as server:
        target = f"127.0.0.1:{server.port}"
        for name in ("mlp", "softmax"):
            status = cli.main(["score", "--target", target, "--model", name, "--no-progress",
                               "--expect-accuracy", "manifest", "--tolerance", "0"])
            assert status == 0
