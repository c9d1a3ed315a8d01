"""The Open Inference Protocol API as NVIDIA's ``tritonclient[grpc]`` sees it (sync and aio).

tritonclient cannot be imported next to our generated ``inference`` package (duplicate proto
symbols), so ``triton_client_checks.py`` runs once in .venv-triton (made by
scripts/triton_client_env.sh) against a real server and reports JSON; these tests check it,
and compare its answers with the domain API's. ``triton_client_stream.py`` runs so per gRPC
server against one serving ``fragile`` (a model whose run fails: tests/fragile_model.py).
"""

import importlib.metadata
import json
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.contract import CLASS_NAMES
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc
from serving.errors import Internal
from tests.conftest import local_settings, running_server
from tests.fragile_model import BLACK, GREY

ROOT = Path(__file__).resolve().parent.parent
MAX_BATCH = 8
IMAGES = 4


@pytest.fixture(scope="module")
def triton_python() -> str:
    setup = subprocess.run([str(ROOT / "scripts" / "triton_client_env.sh")],
                           capture_output=True, text=True, timeout=600, check=False)
    assert setup.returncode == 0, f"scripts/triton_client_env.sh failed:\n{setup.stderr}"
    return setup.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def images(test_set) -> np.ndarray:
    return test_set[0][:IMAGES]


@pytest.fixture(scope="module")
def seen(triton_python, model_repository, images, tmp_path_factory):
    """What tritonclient saw, and the domain API's answers for the same images."""
    folder = tmp_path_factory.mktemp("triton")
    np.save(folder / "images.npy", images)
    settings = local_settings(model_repository=model_repository,
                        max_request_images=MAX_BATCH, parallel_inferences=2, poll_interval=0)
    with running_server(settings) as server:
        target = f"127.0.0.1:{server.port}"
        script = subprocess.Popen(
            [triton_python, str(ROOT / "tests" / "triton_client_checks.py"), target,
             str(folder / "images.npy"), str(folder / "seen.json"), "--drain"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert script.stdout.readline().strip() == "drain?", script.stderr.read()
            domain = _domain_answers(target, images)
            server.admission.close()  # as on SIGTERM: new calls are refused
            _, errors = script.communicate("\n", timeout=60)
        finally:
            script.kill()
        assert script.returncode == 0, errors
    return json.loads((folder / "seen.json").read_text()), domain


def _domain_answers(target: str, images: np.ndarray) -> dict:
    with grpc.insecure_channel(target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        answers = {}
        for model, version in (("mlp", 0), ("mlp", 1), ("softmax", 0), ("baseline", 0)):
            response = stub.Classify(pb.ClassifyRequest(
                model=model, version=version, images=[image.tobytes() for image in images]))
            answers[f"{model}:{version or ''}"] = {
                "probabilities": [list(r.model.probabilities) for r in response.results],
                "label": [r.model.label for r in response.results],
                "version": response.model.version,
            }
        return answers


def test_health_and_server_metadata(seen):
    triton, _ = seen
    sync = triton["sync"]
    assert (sync["live"], sync["ready"], sync["model_ready"]) == (True, True, True)
    assert sync["unknown_model_ready"] == {  # as Triton's: is_model_ready raises
        "status": "StatusCode.NOT_FOUND",
        "message": "name: no model 'nope'; loaded models: baseline, mlp, softmax"}
    assert triton["aio"]["live"] is True
    metadata = sync["server_metadata"]
    assert (metadata["name"], metadata["version"]) == (
        "fashion-mnist-service", importlib.metadata.version("fashion-mnist-service"))
    assert {"classification", "model_configuration", "statistics"} <= set(metadata["extensions"])


def test_model_metadata_describes_the_tensors(seen):
    triton, _ = seen
    metadata = triton["sync"]["model_metadata"]
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (
        "mlp", ["1", "2"], "onnxruntime_onnx")
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8",
                                   "shape": ["-1", "28", "28"]}]
    assert {(o["name"], o["datatype"], tuple(o["shape"])) for o in metadata["outputs"]} == {
        ("probabilities", "FP32", ("-1", "10")), ("label", "INT64", ("-1",))}
    assert triton["aio"]["model_metadata"]["name"] == "softmax"


def test_model_config_is_what_perf_analyzer_needs(seen):
    triton, _ = seen
    config = triton["sync"]["model_config"]["config"]
    assert (config["name"], config["platform"], config["max_batch_size"]) == (
        "mlp", "onnxruntime_onnx", MAX_BATCH)
    assert config["input"] == [{"name": "images", "data_type": "TYPE_UINT8",
                                "dims": ["28", "28"]}]
    assert [o["name"] for o in config["output"]] == ["probabilities", "label"]
    # label is one value per image: dims [] (Triton's own config would say dims [1] with
    # reshape [], which promises [N,1] answers; ours are [N], as ModelMetadata says)
    assert [o.get("dims") for o in config["output"]] == [["10"], None]
    assert "dynamic_batching" in config


def test_infer_with_raw_uint8_equals_the_domain_api(seen):
    triton, domain = seen
    for key, expected in domain.items():
        answer = triton["sync"]["infer"][key]
        np.testing.assert_allclose(answer["probabilities"], expected["probabilities"],
                                   rtol=1e-6, err_msg=key)
        assert answer["label"] == expected["label"], key
        assert (answer["model_name"], answer["model_version"]) == (
            key.split(":")[0], str(expected["version"]))
        assert answer["id"] == key.replace(":", "-")
    np.testing.assert_allclose(triton["aio"]["infer"]["probabilities"],
                               domain["mlp:"]["probabilities"], rtol=1e-6)
    assert triton["sync"]["infer"]["mlp:"]["model_version"] == "2"


def test_a_stream_answers_in_order_with_a_refusal_in_its_place(seen):
    """tritonclient's start_stream / async_stream_infer (Triton's ModelStreamInfer): a refused
    request is answered with its error, and the stream goes on."""
    triton, domain = seen
    first, refused, last = triton["sync"]["stream"]
    assert (first["id"], first["label"]) == ("s1", domain["mlp:"]["label"])
    assert "no model 'nope'" in refused["error"]
    assert (last["id"], last["model_name"], last["label"]) == (
        "s3", "softmax", domain["softmax:"]["label"])


def test_a_stream_answers_a_failed_run_or_a_refusal_in_its_place_and_goes_on(
        triton_python, fragile_server, tmp_path):
    """What start_stream's callback is given when the middle of three requests fails in the
    model's run, or is refused for its shape: result, InferenceServerException with the
    server's message, result, in order; a fourth request is answered. tritonclient gives the
    callback the error's message only (not the answer's id, which the server sends:
    test_stream_failed_runs.py), so the client knows the failed request by its place."""
    np.save(tmp_path / "images.npy", np.concatenate([BLACK, GREY]))
    script = subprocess.run(
        [triton_python, str(ROOT / "tests" / "triton_client_stream.py"),
         f"127.0.0.1:{fragile_server.port}", str(tmp_path / "images.npy"),
         str(tmp_path / "seen.json")], capture_output=True, text=True, timeout=120, check=False)
    assert script.returncode == 0, script.stderr
    given = json.loads((tmp_path / "seen.json").read_text())
    for case, ids, message in (
            ("failed run", "abcd", str(Internal())),
            ("wrong shape", "efgh", "inputs['images'].shape: expected [N,28,28], got [1, 784]")):
        first, failed, last = given[case]
        assert [first.get("id"), last.get("id")] == [ids[0], ids[2]], given[case]
        assert failed == {"error": message, "status": "None",
                          "type": "InferenceServerException"}, case
        assert len(first["label"]) == len(last["label"]) == 1
        [after] = given[f"after the {case}"]
        assert (after.get("id"), after.get("model_name")) == (ids[3], "fragile"), after


def test_requested_outputs_are_the_only_ones_answered(seen):
    triton, domain = seen
    only_label = triton["sync"]["only_label"]
    assert only_label["output_names"] == ["label"]
    assert only_label["label"] == domain["mlp:"]["label"]


def test_classification_gives_the_top_classes_as_triton_does(seen):
    triton, domain = seen
    rows = triton["sync"]["classification"]["probabilities"]
    assert len(rows) == IMAGES and all(len(row) == 3 for row in rows)
    for row, probabilities, label in zip(rows, domain["mlp:"]["probabilities"],
                                         domain["mlp:"]["label"], strict=True):
        value, index, name = row[0].split(":")
        assert (int(index), name) == (label, CLASS_NAMES[label])
        assert float(value) == pytest.approx(probabilities[label], abs=1e-6)
        assert [float(entry.split(":")[0]) for entry in row] == sorted(
            (float(entry.split(":")[0]) for entry in row), reverse=True)


def test_statistics_count_the_inferences(seen):
    triton, _ = seen
    stats = {s["version"]: s for s in triton["sync"]["statistics"]["model_stats"]}
    assert set(stats) == {"1", "2"}
    newest = stats["2"]["inference_stats"]
    # before the statistics call: infer mlp, only_label, classification (newest), aio not yet
    assert int(newest["success"]["count"]) >= 3
    counts = {newest[phase]["count"] for phase in ("compute_input", "compute_infer",
                                                   "compute_output")}
    assert counts == {newest["success"]["count"]}
    assert int(stats["2"]["inference_count"]) >= 3 * IMAGES


ERRORS = {
    "unknown model": ("NOT_FOUND", "no model 'nope'"),
    "unknown version": ("NOT_FOUND", "has no version 9"),
    "bad version": ("INVALID_ARGUMENT", "model_version"),
    "wrong datatype": ("INVALID_ARGUMENT", "expected UINT8, got 'FP32'"),
    "wrong shape": ("INVALID_ARGUMENT", "expected [N,28,28], got [4, 784]"),
    "wrong input name": ("INVALID_ARGUMENT", "expected one input 'images', got ['pixels']"),
    "empty batch": ("INVALID_ARGUMENT", "expected at least 1 image"),
    "batch over the limit": ("INVALID_ARGUMENT", f"at most {MAX_BATCH} images"),
    "unknown output": ("INVALID_ARGUMENT", "has no such output"),
    "classification of label": ("INVALID_ARGUMENT", "classification applies to"),
    "metadata of unknown model": ("NOT_FOUND", "no model 'nope'"),
    "config of unknown model": ("NOT_FOUND", "no model 'nope'"),
    "statistics of unknown version": ("NOT_FOUND", "has no version 9"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_each_refusal_has_the_domain_status_code(seen, case):
    triton, _ = seen
    code, message = ERRORS[case]
    refused = triton["sync"]["errors"][case]
    assert refused["status"] == f"StatusCode.{code}", refused
    assert message in refused["message"]


def test_aio_client_and_draining_server_get_the_same_codes(seen):
    triton, _ = seen
    assert triton["aio"]["unknown model"]["status"] == "StatusCode.NOT_FOUND"
    assert triton["draining"]["status"] == "StatusCode.UNAVAILABLE"

