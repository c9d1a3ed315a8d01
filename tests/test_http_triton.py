"""The HTTP side as NVIDIA's ``tritonclient.http`` sees it, sync and aio, with binary and JSON
tensors: the answers are the gRPC API's, and every error row of the contract reaches the
client with its HTTP status and the message naming the field.

(tritonclient's HTTP client imports no protobuf code, so unlike its gRPC client it runs in
this process: tests/test_triton_client.py says why that one cannot.)"""

import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from tests.http_helpers import http_and_grpc, http_server, http_settings

MAX_IMAGES = 8
MAX_BYTES = 65536
TOKEN = "http-s3cret"


@pytest.fixture(scope="module")
def served(model_repository):
    with http_and_grpc(model_repository, max_request_images=MAX_IMAGES,
                       max_message_bytes=MAX_BYTES) as (server, url, channel):
        yield server, url.removeprefix("http://"), pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def images(test_set) -> np.ndarray:
    return test_set[0][:4]


def grpc_answer(v2, images: np.ndarray, class_count: int = 0) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    tensor.contents.uint_contents.extend(images.ravel().tolist())
    if class_count:
        output = request.outputs.add(name="probabilities")
        output.parameters["classification"].int64_param = class_count
    return v2.ModelInfer(request)


def tensors(client_module, images: np.ndarray, binary: bool, class_count: int = 0):
    tensor = client_module.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    if class_count:
        return {"inputs": [tensor], "outputs": [client_module.InferRequestedOutput(
            "probabilities", binary_data=binary, class_count=class_count)]}
    return {"inputs": [tensor], "outputs": [client_module.InferRequestedOutput(
        name, binary_data=binary) for name in ("probabilities", "label")]}


def check_answers(result, expected: pb.ModelInferResponse) -> None:
    """gRPC answers raw, as Triton's does, whatever form the request's data came in."""
    probabilities, label = expected.raw_output_contents
    np.testing.assert_array_equal(result.as_numpy("probabilities"),
                                  np.frombuffer(probabilities, "<f4").reshape(-1, 10))
    np.testing.assert_array_equal(result.as_numpy("label"), np.frombuffer(label, "<i8"))


def check_classification(result, expected: pb.ModelInferResponse) -> None:
    """BYTES come back as bytes from binary data, as str from JSON (as from Triton)."""
    top = deserialize_bytes_tensor(expected.raw_output_contents[0]).reshape(-1, 3)
    got = [[value if isinstance(value, bytes) else value.encode() for value in row]
           for row in result.as_numpy("probabilities").tolist()]
    assert got == top.tolist()


def test_sync_client_gets_the_grpc_answers(served, images):
    _, target, v2 = served
    with triton.InferenceServerClient(target) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
        assert not client.is_model_ready("nope")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        assert client.get_model_metadata("mlp")["inputs"][0]["shape"] == [-1, 28, 28]
        assert client.get_model_config("mlp")["max_batch_size"] == MAX_IMAGES
        expected = grpc_answer(v2, images)
        for binary in (True, False):
            check_answers(client.infer("mlp", **tensors(triton, images, binary)), expected)
        all_outputs = tensors(triton, images, True)["inputs"]  # binary_data_output: true
        check_answers(client.infer("mlp", all_outputs), expected)
        for binary in (True, False):
            check_classification(client.infer("mlp", **tensors(triton, images, binary, 3)),
                                 grpc_answer(v2, images, 3))
        stats = client.get_inference_statistics("mlp")["model_stats"]
        assert sum(entry["inference_count"] for entry in stats) >= 5 * len(images)


def test_query_params_are_ignored_as_triton_ignores_them(served, images):
    """tritonclient puts its ``query_params`` on the URL, for a gateway in between; /v2, as
    Triton, KServe and MLServer, reads none (the protocol defines none): ``version`` there
    chooses nothing, the newest version answers."""
    _, target, v2 = served
    gateway = {"api-key": "k3y", "version": "1"}
    with triton.InferenceServerClient(target) as client:
        assert client.is_server_live(query_params=gateway)
        check_answers(client.infer("mlp", **tensors(triton, images, True), query_params=gateway),
                      grpc_answer(v2, images))


# Triton's $inference_stats (docs/protocol/extension_statistics.md), each a $duration_stat
TRITON_INFERENCE_STATS = ("success", "fail", "queue", "compute_input", "compute_infer",
                          "compute_output", "cache_hit", "cache_miss")


def test_statistics_have_every_field_of_tritons_inference_stats(served, images):
    """cache_hit and cache_miss were missing (unset on gRPC, absent from HTTP's JSON): a
    client reading Triton's schema failed on them. No response cache here: always zero."""
    _, target, v2 = served
    with triton.InferenceServerClient(target) as client:
        client.infer("mlp", **tensors(triton, images, True))
        (stats,) = client.get_inference_statistics("mlp", "1")["model_stats"]
    assert {name: tuple(sorted(duration)) for name, duration in
            stats["inference_stats"].items()} == dict.fromkeys(TRITON_INFERENCE_STATS,
                                                               ("count", "ns"))
    assert stats["inference_stats"]["cache_hit"] == stats["inference_stats"]["cache_miss"] == {
        "count": 0, "ns": 0}
    (grpc_stats,) = v2.ModelStatistics(pb.ModelStatisticsRequest(name="mlp", version="1"))\
        .model_stats
    assert [grpc_stats.inference_stats.HasField(name) for name in TRITON_INFERENCE_STATS] == \
        [True] * len(TRITON_INFERENCE_STATS)


async def test_aio_client_gets_the_grpc_answers(served, images):
    _, target, v2 = served
    async with triton_aio.InferenceServerClient(target) as client:
        assert await client.is_server_live() and await client.is_model_ready("mlp")
        assert (await client.get_model_config("mlp"))["input"][0]["dims"] == [28, 28]
        expected = grpc_answer(v2, images)
        for binary in (True, False):
            check_answers(await client.infer("mlp", **tensors(triton_aio, images, binary)),
                          expected)
        check_classification(await client.infer("mlp", **tensors(triton_aio, images, True, 3)),
                             grpc_answer(v2, images, 3))


def _refusals(module):
    """(call arguments, status, message) of every data-plane error row tritonclient can send."""
    zeros = np.zeros((1, 28, 28), np.uint8)
    floats = module.InferInput("images", [1, 28, 28], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
    return [
        ({"model_name": "nope", "inputs": tensors(module, zeros, True)["inputs"]}, "404",
         "nope"),
        ({"model_name": "mlp", "model_version": "99",
          "inputs": tensors(module, zeros, True)["inputs"]}, "404", "99"),
        ({"model_name": "mlp", "model_version": "x",
          "inputs": tensors(module, zeros, True)["inputs"]},
         "400", "model_version: expected"),
        ({"model_name": "mlp", "inputs": tensors(
            module, np.zeros((MAX_IMAGES + 1, 28, 28), np.uint8), True)["inputs"]},
         "400", f"expected at most {MAX_IMAGES} images"),
        ({"model_name": "mlp", "inputs": [floats]}, "400", "datatype: expected UINT8, got 'FP32'"),
        ({"model_name": "mlp", "inputs": tensors(module, zeros, False)["inputs"],
          "outputs": [module.InferRequestedOutput("label", class_count=2)]},
         "400", "classification applies to 'probabilities' only"),
        ({"model_name": "mlp", "inputs": tensors(module, zeros, True)["inputs"],
          "request_id": "x" * MAX_BYTES}, "413", f"limit of {MAX_BYTES}"),
    ]


@pytest.mark.parametrize("row", range(len(_refusals(triton))))
def test_sync_client_sees_each_error_row(served, row):
    arguments, status, message = _refusals(triton)[row]
    with triton.InferenceServerClient(served[1]) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.infer(**arguments)
        assert (refused.value.status(), message in refused.value.message()) == (status, True), \
            refused.value.message()


@pytest.mark.parametrize("row", range(len(_refusals(triton_aio))))
async def test_aio_client_sees_each_error_row(served, row):
    arguments, status, message = _refusals(triton_aio)[row]
    async with triton_aio.InferenceServerClient(served[1]) as client:
        with pytest.raises(InferenceServerException) as refused:
            await client.infer(**arguments)
    assert (refused.value.status(), message in refused.value.message()) == (status, True), \
        refused.value.message()


@pytest.mark.parametrize("sequence_id", [2**63 - 1, 2**63, 2**64 - 1])
def test_request_parameters_take_every_uint64_as_tritons_sequence_id(served, images,
                                                                      sequence_id):
    """tritonclient sends a sequence id (a uint64 to Triton) as a JSON integer: 2**63 and up
    were refused, "expected a boolean, integer, ..., got 9223372036854775808", while 2**64
    (a float to JSON parsers) was taken."""
    _, target, v2 = served
    with triton.InferenceServerClient(target) as client:
        check_answers(client.infer("mlp", sequence_id=sequence_id, priority=2**64 - 1,
                                   **tensors(triton, images, True)), grpc_answer(v2, images))


def test_overload_and_draining_reach_the_client_as_429_and_503(served, images):
    server, target, _ = served
    with triton.InferenceServerClient(target) as client:
        inputs = tensors(triton, images, True)["inputs"]
        server.admission.max_in_flight, server.admission.in_flight = 1, 1  # one call held
        try:
            with pytest.raises(InferenceServerException) as refused:
                client.infer("mlp", inputs)
            assert refused.value.status() == "429"
        finally:
            server.admission.max_in_flight, server.admission.in_flight = 0, 0
        server._draining.set()  # what stop() does first, then after its health notice:
        server.admission.accepting = False
        try:
            with pytest.raises(InferenceServerException) as refused:
                client.infer("mlp", inputs)
            assert refused.value.status() == "503" and "shutting down" in refused.value.message()
            assert client.is_server_live() and not client.is_server_ready()
        finally:
            server.admission.accepting = True
            server._draining.clear()
        assert client.infer("mlp", inputs).as_numpy("label").shape == (len(images),)


@pytest.fixture(scope="module")
def token_server(model_repository):
    with http_server(http_settings(model_repository, auth_token=TOKEN)) as (_, url):
        yield url.removeprefix("http://")


async def test_the_token_is_needed_but_not_for_health(token_server, images):
    inputs = tensors(triton, images, True)["inputs"]
    with triton.InferenceServerClient(token_server) as anonymous:
        assert anonymous.is_server_live() and anonymous.is_server_ready()
        with pytest.raises(InferenceServerException) as refused:
            anonymous.infer("mlp", inputs)
        assert refused.value.status() == "401" and "bearer token" in refused.value.message()
        wrong = {"Authorization": "Bearer nope"}
        with pytest.raises(InferenceServerException) as refused:
            anonymous.get_model_metadata("mlp", headers=wrong)
        assert refused.value.status() == "401"
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert anonymous.infer("mlp", inputs, headers=good).as_numpy("label").shape == (4,)
        async with triton_aio.InferenceServerClient(token_server) as client:
            with pytest.raises(InferenceServerException) as refused:
                await client.infer("mlp", tensors(triton_aio, images, True)["inputs"])
            assert refused.value.status() == "401"
            result = await client.infer("mlp", tensors(triton_aio, images, True)["inputs"],
                                        headers=good)
            assert result.as_numpy("label").shape == (4,)
