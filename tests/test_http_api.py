"""The HTTP transport against a real server: every endpoint answers as the gRPC API does for
the same request (and as onnxruntime does on the model file), every error row of the contract
gets its status and a message naming the field, and the real curl binary works as the README
shows."""

import io
import json
import subprocess

import grpc
import numpy as np
import onnxruntime
import pytest
import requests
from PIL import Image
from tritonclient.utils import deserialize_bytes_tensor

from common.pictures import load_png
from fashion_mnist.v1 import classifier_pb2 as domain_pb
from fashion_mnist.v1 import classifier_pb2_grpc as domain_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.http.body import message_json
from tests.http_helpers import http_and_grpc, http_server, http_settings

MAX_IMAGES = 8
MAX_BYTES = 65536


@pytest.fixture(scope="module")
def served(model_repository):
    with http_and_grpc(model_repository, max_request_images=MAX_IMAGES,
                       max_message_bytes=MAX_BYTES) as served:
        yield served


@pytest.fixture(scope="module")
def url(served) -> str:
    return served[1]


@pytest.fixture(scope="module")
def v2(served) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(served[2])


@pytest.fixture(scope="module")
def images(test_set) -> np.ndarray:
    return test_set[0][:4]


def infer_json(images: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "images", "datatype": "UINT8", "shape": list(images.shape),
                        "data": images.tolist()}], **extra}


def binary_infer(url: str, images: np.ndarray, model: str = "mlp") -> requests.Response:
    header = json.dumps({
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": list(images.shape),
                    "parameters": {"binary_data_size": images.size}}],
        "parameters": {"binary_data_output": True}}).encode()
    return requests.post(f"{url}/v2/models/{model}/infer", data=header + images.tobytes(),
                         headers={"Inference-Header-Content-Length": str(len(header))},
                         timeout=10)


def newest_onnx(model_repository, name: str):
    version = max(int(path.name) for path in (model_repository / name).iterdir()
                  if path.name.isdigit())
    return onnxruntime.InferenceSession(str(model_repository / name / str(version) /
                                            "model.onnx"), providers=["CPUExecutionProvider"])


def test_health_metadata_config_and_statistics_are_the_grpc_answers(url, v2):
    assert requests.get(f"{url}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{url}/v2/health/ready", timeout=5).json() == {"ready": True}
    server = requests.get(f"{url}/v2", timeout=5).json()
    expected = message_json(v2.ServerMetadata(pb.ServerMetadataRequest()))
    assert server == expected  # binary_tensor_data too, as Triton's gRPC lists it
    for path, version, versions in (("mlp", "", ["1", "2"]), ("mlp/versions/1", "1", ["1"])):
        got = requests.get(f"{url}/v2/models/{path}", timeout=5)
        assert got.status_code == 200 and got.headers["Content-Type"] == "application/json"
        assert got.json()["versions"] == versions and got.json() == message_json(
            v2.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version=version)))
        config = requests.get(f"{url}/v2/models/{path}/config", timeout=5).json()
        assert config == message_json(
            v2.ModelConfig(pb.ModelConfigRequest(name="mlp", version=version)).config)
        ready = requests.get(f"{url}/v2/models/{path}/ready", timeout=5).json()
        assert ready == {"name": "mlp", "ready": True}
    assert config["input"][0]["dims"] == [28, 28]  # numbers, as perf_analyzer reads them
    assert [o["dims"] for o in config["output"]] == [[10], []]  # as ModelMetadata's shapes
    stats = requests.get(f"{url}/v2/models/mlp/stats", timeout=5).json()
    assert {entry["name"] for entry in stats["model_stats"]} == {"mlp"}
    everything = requests.get(f"{url}/v2/models/stats", timeout=5).json()
    assert {entry["name"] for entry in everything["model_stats"]} == {"softmax", "mlp",
                                                                       "baseline"}


def test_infer_json_and_binary_equal_grpc_and_onnxruntime(url, v2, images, model_repository):
    probabilities, labels = newest_onnx(model_repository, "mlp").run(None, {"images": images})
    answer = requests.post(f"{url}/v2/models/mlp/infer", timeout=10,
                           json=infer_json(images, id="a1")).json()
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert (answer["model_name"], answer["id"]) == ("mlp", "a1")
    assert outputs["probabilities"]["shape"] == [4, 10]
    json_probabilities = np.array(outputs["probabilities"]["data"], np.float32).reshape(4, 10)
    np.testing.assert_array_equal(outputs["label"]["data"], labels)

    binary = binary_infer(url, images)
    length = int(binary.headers["Inference-Header-Content-Length"])
    header = json.loads(binary.content[:length])
    sizes = [output["parameters"]["binary_data_size"] for output in header["outputs"]]
    blob = binary.content[length:]
    binary_probabilities = np.frombuffer(blob[:sizes[0]], "<f4").reshape(4, 10)
    np.testing.assert_array_equal(np.frombuffer(blob[sizes[0]:], "<i8"), labels)

    request = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[images.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    grpc_probabilities = np.frombuffer(v2.ModelInfer(request).raw_output_contents[0],
                                       "<f4").reshape(4, 10)
    np.testing.assert_array_equal(json_probabilities, grpc_probabilities)
    np.testing.assert_array_equal(binary_probabilities, grpc_probabilities)
    np.testing.assert_allclose(grpc_probabilities, probabilities, rtol=0, atol=1e-6)


def test_a_raw_binary_request_is_one_image_answered_in_binary(url, v2, images):
    """Triton's binary data extension: with Inference-Header-Content-Length 0 the body is the
    one input's bytes alone, a batch of one, and every output comes back binary."""
    answer = requests.post(f"{url}/v2/models/mlp/infer", data=images[0].tobytes(), timeout=10,
                           headers={"Inference-Header-Content-Length": "0",
                                    "Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["Inference-Header-Content-Length"])
    header = json.loads(answer.content[:length])
    assert [(o["name"], o["shape"]) for o in header["outputs"]] == [
        ("probabilities", [1, 10]), ("label", [1])]
    request = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[images[0].tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 28, 28])
    assert answer.content[length:] == b"".join(v2.ModelInfer(request).raw_output_contents)
    two = requests.post(f"{url}/v2/models/mlp/infer", data=images[:2].tobytes(), timeout=10,
                        headers={"Inference-Header-Content-Length": "0"})
    assert two.status_code == 400, two.text
    assert two.json()["error"] == ("request body: a raw binary request (Inference-Header-"
                                   "Content-Length: 0) is one image: expected 784 bytes (28x28 "
                                   "uint8), got 1568")


def test_classification_parameter_as_grpc(url, v2, images):
    answer = requests.post(f"{url}/v2/models/mlp/infer", timeout=10, json=infer_json(
        images, outputs=[{"name": "probabilities", "parameters": {"classification": 3}}])).json()
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    tensor.contents.uint_contents.extend(images.ravel().tolist())
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].int64_param = 3
    expected = deserialize_bytes_tensor(v2.ModelInfer(request).raw_output_contents[0])
    (got,) = answer["outputs"]
    assert (got["datatype"], got["shape"]) == ("BYTES", [4, 3])
    assert got["data"] == [entry.decode() for entry in expected]


def domain_answer(channel, images: np.ndarray, model: str = "") -> domain_pb.ClassifyResponse:
    return domain_grpc.ClassifierStub(channel).Classify(domain_pb.ClassifyRequest(
        images=[image.tobytes() for image in images], model=model))


def test_classify_json_takes_the_model_and_version_from_the_query_too(served, images):
    _, url, _ = served
    body = {"images": [images[0].ravel().tolist()]}

    def post(query: str, **fields):
        return requests.post(f"{url}/v1/classify?{query}", timeout=10, json={**body, **fields})

    assert post("model=softmax").json()["model"] == {"name": "softmax", "version": 1}
    assert post("model=mlp&version=1").json()["model"] == {"name": "mlp", "version": 1}
    assert post("model=softmax", model="softmax").status_code == 200
    assert post("model=softmax", model="").json()["model"]["name"] == "softmax"  # "": default
    assert post("model=mlp&version=1", version=0).json()["model"] == {"name": "mlp", "version": 1}
    assert post("model=nosuch").status_code == 404
    assert post("model=mlp&version=7").status_code == 404
    conflict = post("model=softmax", model="mlp")
    assert conflict.status_code == 400
    assert conflict.json()["error"] == "model: the query asks for 'softmax', the body for 'mlp'"


def test_classify_json_of_too_many_images_is_refused_for_their_count_first(served):
    """As over gRPC, whose codec counts the images first. Each JSON image was converted before
    they were counted: one past the limit that was not an image was named instead, and 4 MiB
    of empty images ("[],") were converted one by one before their refusal."""
    _, url, channel = served
    expected = f"images: expected at most {MAX_IMAGES} images per request"
    answer = requests.post(f"{url}/v1/classify", timeout=10,
                           json={"images": [[0] * 784] * MAX_IMAGES + [[], "x"]})
    assert answer.status_code == 400 and answer.json()["error"].startswith(expected)
    with pytest.raises(grpc.RpcError) as refused:
        domain_grpc.ClassifierStub(channel).Classify(domain_pb.ClassifyRequest(
            images=[bytes(784)] * MAX_IMAGES + [b"", b"x"]), timeout=10)
    assert refused.value.details().startswith(expected)


def test_classify_json_and_image_file_equal_grpc(served, images, tmp_path):
    _, url, channel = served
    answer = requests.post(f"{url}/v1/classify?top=3", timeout=10, json={
        "images": [image.ravel().tolist() for image in images], "model": "softmax"}).json()
    expected = domain_answer(channel, images, "softmax")
    assert answer["model"] == {"name": "softmax", "version": expected.model.version}
    assert answer["baseline"]["name"] == expected.baseline.name
    for got, result in zip(answer["results"], expected.results, strict=True):
        for side in ("model", "baseline"):
            want = getattr(result, side)
            best = np.argsort(-np.array(want.probabilities), kind="stable")[:3]
            assert got[side]["label"] == want.label
            assert got[side]["class_name"] == want.class_name
            assert [entry["label"] for entry in got[side]["top"]] == best.tolist()
            assert got[side]["top"][0]["probability"] == pytest.approx(
                max(want.probabilities), abs=1e-6)
        assert "pixels" not in got

    picture = tmp_path / "shoe.png"
    Image.fromarray(np.kron(images[0], np.ones((3, 2), np.uint8))).save(picture)  # 84x56
    seen = load_png(picture)
    answer = requests.post(f"{url}/v1/classify?pixels=1", data=picture.read_bytes(),
                           timeout=10).json()
    (result,) = answer["results"]
    assert result["pixels"] == seen.ravel().tolist()
    assert result["model"]["label"] == domain_answer(channel, seen[None]).results[0].model.label


def test_a_test_images_dir_that_is_not_one_is_said_at_start(model_repository, tmp_path,
                                                             caplog):
    """--test-images-dir naming nothing was taken in silence: 404s for good, no word why."""
    missing = tmp_path / "no-such-dir"
    with caplog.at_level("WARNING"), http_server(
            http_settings(model_repository, test_images_dir=str(missing))) as (_, url):
        answers = [requests.get(f"{url}/v1/test-images/{i}", timeout=5) for i in range(3)]
    assert [answer.status_code for answer in answers] == [404] * 3
    # where the server looked is its log's to say, not a client's to learn
    assert answers[0].json()["error"] == "no test images on this server (its log says why)"
    assert str(missing) not in answers[0].text
    # once, not once a request: any client could fill the log (it did)
    [logged] = [r.fields["error"] for r in caplog.records
                if r.getMessage() == "test images cannot be read"]
    assert logged.startswith(str(missing)) and "point --test-images-dir" in logged
    warned = [r for r in caplog.records if r.getMessage().startswith("--test-images-dir")]
    assert [(r.getMessage(), r.fields) for r in warned] == [(
        "--test-images-dir is not a directory: the page's test images are 404",
        {"directory": str(missing)})]


def test_domain_models_and_test_images(served, test_set):
    _, url, channel = served
    listed = requests.get(f"{url}/v1/models", timeout=5).json()
    assert listed.pop("default_model") == "mlp"  # the fixture's --default-model
    expected = domain_grpc.ClassifierStub(channel).ListModels(domain_pb.ListModelsRequest())
    assert listed == {"models": [message_json(model) for model in expected.models]}
    one = requests.get(f"{url}/v1/models/mlp?version=1", timeout=5).json()
    assert (one["name"], one["version"]) == ("mlp", 1)
    # /v1/classify's other options mean nothing here: refused by name, as a misspelt one
    refused = requests.get(f"{url}/v1/models/mlp?version=1&top=99&invert=x", timeout=5)
    assert (refused.status_code, refused.json()["error"]) == (
        400, "invert, top: not an option of /v1/models/{name}; expected version")
    image = requests.get(f"{url}/v1/test-images/17", timeout=5).json()
    assert image["pixels"] == test_set[0][17].ravel().tolist()
    assert image["label"] == test_set[1][17]
    assert 0 <= requests.get(f"{url}/v1/test-images/random", timeout=5).json()["index"] < 10000


def test_page_is_served_self_contained(url):
    page = requests.get(url, timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside


def test_curl_infers_json_and_classifies_a_png(served, images, tmp_path):
    _, url, channel = served
    request = tmp_path / "infer.json"
    request.write_text(json.dumps(infer_json(images[:1])))
    out = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", "Content-Type: application/json",
                          "--data-binary", f"@{request}", f"{url}/v2/models/mlp/infer"],
                         capture_output=True, check=True, timeout=30).stdout
    labels = {o["name"]: o["data"] for o in json.loads(out)["outputs"]}["label"]
    assert labels == [domain_answer(channel, images[:1], "mlp").results[0].model.label]
    picture = tmp_path / "item.png"
    Image.fromarray(images[1]).save(picture)
    out = subprocess.run(["curl", "-sS", "--fail-with-body", "--data-binary", f"@{picture}",
                          f"{url}/v1/classify"], capture_output=True, check=True,
                         timeout=30).stdout
    assert json.loads(out)["results"][0]["model"]["label"] == domain_answer(
        channel, images[1:2]).results[0].model.label


def test_png_bytes_are_converted_as_fmnist_classify_converts_them(url):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, "JPEG")
    answer = requests.post(f"{url}/v1/classify?pixels=1&invert=1", data=buffer.getvalue(),
                           timeout=10).json()
    buffer.seek(0)
    assert answer["results"][0]["pixels"] == load_png(buffer, invert=True).ravel().tolist()
