"""The Prometheus endpoint, scraped over HTTP after real calls through both APIs."""

import asyncio
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from fashion_mnist.v1 import classifier_pb2 as classifier_pb
from fashion_mnist.v1 import classifier_pb2_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import held_port, local_settings, running_server
from tests.server_process import server_process

IMAGES = np.zeros((3, 28, 28), dtype=np.uint8)


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def metered(model_repository, grpc_server):
    port = held_port()
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              metrics_port=port, poll_interval=0)
    async with running_server(settings) as server:
        yield server, port


async def test_metrics_count_calls_by_api_method_model_and_code(metered):
    server, port = metered
    before = await asyncio.to_thread(scrape, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        domain = classifier_pb2_grpc.ClassifierStub(channel)
        request = pb.ModelInferRequest(
            model_name="mlp", inputs=[pb.ModelInferRequest.InferInputTensor(
                name="images", datatype="UINT8", shape=IMAGES.shape)],
            raw_input_contents=[IMAGES.tobytes()])
        for _ in range(2):
            await v2.ModelInfer(request)
        await domain.Classify(classifier_pb.ClassifyRequest(
            images=[image.tobytes() for image in IMAGES]))
        with pytest.raises(grpc.aio.AioRpcError):
            await v2.ModelInfer(pb.ModelInferRequest(model_name="nope"))
    after = await asyncio.to_thread(scrape, port)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"api": "v2", "method": "ModelInfer", "model": "mlp"}
    assert moved("fmnist_requests_total", code="OK", **ok) == 2
    assert moved("fmnist_requests_total", api="v2", method="ModelInfer", model="other",
                 code="NOT_FOUND") == 1
    assert moved("fmnist_requests_total", api="domain", method="Classify", model="mlp",
                 code="OK") == 1
    assert moved("fmnist_request_duration_seconds_count", **ok) == 2
    assert moved("fmnist_request_duration_seconds_sum", **ok) > 0
    # mlp (newest: version 2) ran for 2 v2 calls and 1 domain call, the baseline for 1
    assert moved("fmnist_batch_size_sum", model="mlp", version="2") == 3 * len(IMAGES)
    assert moved("fmnist_batch_size_count", model="baseline", version="1") == 1
    assert moved("fmnist_inference_requests_total", model="mlp", version="2",
                 outcome="success") == 3
    assert value(after, "fmnist_requests_in_flight") == 0
    sha = server.registry.get("mlp", 2).manifest.sha256[:12]
    assert value(after, "fmnist_model_info", model="mlp", version="2", sha256=sha) == 1


@pytest.mark.parametrize(("path", "labels"), [
    ("/v2/models/mlp/infer", {"api": "v2", "method": "ModelInfer", "model": "mlp"}),
    ("/v1/classify?model=softmax", {"api": "domain", "method": "Classify", "model": "softmax"}),
    ("/v1/classify?model=nope", {"api": "domain", "method": "Classify", "model": "other"}),
    ("/v1/classify", {"api": "domain", "method": "Classify", "model": ""})])
async def test_an_http_request_whose_body_cannot_be_read_is_counted_under_its_urls_model(
        model_repository, path, labels):
    """The URL names the model: a body that fails to parse was counted under model "", so
    a model's error rate left out its clients' bad requests over HTTP (/v1/classify's
    ``?model=`` too; one naming none says nothing of the model)."""
    port = held_port()
    settings = local_settings(model_repository=model_repository, metrics_port=port,
                              poll_interval=0, http_port=held_port())
    async with running_server(settings) as server:
        before = await asyncio.to_thread(scrape, port)
        refused = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}{path}", data=b"{not json",
            headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            await asyncio.to_thread(urllib.request.urlopen, refused, timeout=10)
        assert answer.value.code == 400
        after = await asyncio.to_thread(scrape, port)
    labels = {**labels, "code": "INVALID_ARGUMENT"}
    assert value(after, "fmnist_requests_total", **labels) - value(
        before, "fmnist_requests_total", **labels) == 1


async def test_a_stream_whose_deadline_passes_is_counted_as_over_never_ok_nor_a_crash(
        metered, caplog):
    """The server's read of the next request ends when the deadline passes; the stream is
    counted by why it is over (DEADLINE_EXCEEDED, or CANCELLED if gRPC's own timer, started a
    little earlier than the server's, is seen first), never OK nor INTERNAL, and logs no crash.
    (A client's cancellation is not tested: gRPC may end the request stream before it reports
    the cancellation, and the stream then counts OK.)"""
    server, port = metered
    codes = ("DEADLINE_EXCEEDED", "CANCELLED", "OK", "INTERNAL")

    def counts() -> dict[str, float]:
        samples = scrape(port)
        return {code: value(samples, "fmnist_requests_total", api="domain",
                            method="ClassifyStream", model="mlp", code=code) for code in codes}

    before = await asyncio.to_thread(counts)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(timeout=0.5)
        await stream.write(classifier_pb.ClassifyRequest(images=[IMAGES[0].tobytes()]))
        await stream.read()
        assert await stream.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):  # the server ends the call after the client's deadline
        moved = {code: count - before[code]
                 for code, count in (await asyncio.to_thread(counts)).items()}
        if sum(moved.values()):
            break
        await asyncio.sleep(0.05)
    assert moved["DEADLINE_EXCEEDED"] + moved["CANCELLED"] == 1, moved
    assert moved["OK"] == moved["INTERNAL"] == 0, moved
    assert "request crashed" not in caplog.text


async def test_metrics_port_in_use_is_a_listen_error(model_repository):
    from serving.server import ListenError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = local_settings(model_repository=model_repository,
                            metrics_port=taken.getsockname()[1], poll_interval=0)
        with pytest.raises(ListenError, match="metrics"):
            async with running_server(settings):
                pass


async def test_calls_refused_before_they_run_are_counted_by_their_code(model_repository,
                                                                       grpc_server):
    """A bad token, a call over --max-concurrent-calls and a call while draining are counted
    by code, with no latency: an operator alerting on overload or on refused tokens sees them."""
    port = held_port()
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              metrics_port=port, poll_interval=0, auth_token="secret",
                              max_concurrent_calls=1)
    token = (("authorization", "Bearer secret"),)
    async with running_server(settings) as server:
        before = await asyncio.to_thread(scrape, port)  # the metrics live as long as pytest
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            domain = classifier_pb2_grpc.ClassifierStub(channel)
            request = classifier_pb.ClassifyRequest(images=[IMAGES[0].tobytes()])
            stream = domain.ClassifyStream(metadata=token)  # holds the one call allowed
            await stream.write(request)
            await stream.read()
            codes = []
            for metadata in (token, token, (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await domain.Classify(request, metadata=metadata)
                codes.append(refused.value.code().name)
            # health, as over HTTP: no token, never refused for want of a slot, not counted
            inference = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await inference.ServerLive(pb.ServerLiveRequest())).live
            await stream.done_writing()
            assert (await stream.code()) == grpc.StatusCode.OK
            server._draining.set()  # draining, as stop() begins it
            server.admission.close()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await domain.Classify(request, metadata=token)
            codes.append(refused.value.code().name)
            assert not (await inference.ServerReady(pb.ServerReadyRequest())).ready
        after = await asyncio.to_thread(scrape, port)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert codes == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED",
                     "UNAVAILABLE"]
    classify = {"api": "domain", "method": "Classify", "model": ""}
    assert moved("fmnist_requests_total", code="RESOURCE_EXHAUSTED", **classify) == 2
    assert moved("fmnist_requests_total", code="UNAUTHENTICATED", **classify) == 1
    assert moved("fmnist_requests_total", code="UNAVAILABLE", **classify) == 1
    assert moved("fmnist_request_duration_seconds_count", **classify) == 0
    assert all(moved("fmnist_requests_total", api="v2", method=method, model="", code=code) == 0
               for method in ("ServerLive", "ServerReady") for code in ("OK", "UNAVAILABLE"))


async def test_a_stream_refused_for_want_of_a_slot_is_counted(model_repository, grpc_server):
    port = held_port()
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              metrics_port=port, poll_interval=0, call_threads=2)  # 1 stream
    async with running_server(settings) as server:
        before = await asyncio.to_thread(scrape, port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            domain = classifier_pb2_grpc.ClassifierStub(channel)
            request = classifier_pb.ClassifyRequest(images=[IMAGES[0].tobytes()])
            held = domain.ClassifyStream()
            await held.write(request)
            await held.read()
            refused = domain.ClassifyStream()
            await refused.write(request)
            await refused.done_writing()
            assert (await refused.code()) == grpc.StatusCode.RESOURCE_EXHAUSTED
            await held.done_writing()
            assert (await held.code()) == grpc.StatusCode.OK
        after = await asyncio.to_thread(scrape, port)
    labels = {"api": "domain", "method": "ClassifyStream", "model": ""}
    assert value(after, "fmnist_requests_total", code="RESOURCE_EXHAUSTED", **labels) - value(
        before, "fmnist_requests_total", code="RESOURCE_EXHAUSTED", **labels) == 1


def test_one_process_serves_its_metrics_whatever_prometheus_multiproc_dir_says(
        model_repository, tmp_path, monkeypatch):
    """PROMETHEUS_MULTIPROC_DIR left in the environment (another program's, a base image's)
    made a one-process server take itself for a supervised worker: --metrics-port served
    nothing (connection refused) and no line said why, while its metrics went to files there.
    Its series are those of several workers: it had a ``*_created`` gauge per series too."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    port = held_port()
    with server_process(model_repository, "--workers", "1", "--metrics-port", str(port),
                        "--poll-interval", "0") as (_, logs):
        target = logs.wait_for("serving")[0]["address"]
        with grpc.insecure_channel(target) as channel:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb.ClassifyRequest(images=[IMAGES[0].tobytes()]), timeout=30)
        samples = scrape(port)
    assert value(samples, "fmnist_requests_total", api="domain", method="Classify",
                 model="mlp", code="OK") == 1
    assert value(samples, "process_resident_memory_bytes") > 0  # this process's own
    assert [name for name, _ in samples if name.endswith("_created")] == []
    assert list(tmp_path.iterdir()) == []


def test_a_message_over_the_limit_is_not_counted_as_a_cancelled_call(model_repository,
                                                                      grpc_server):
    """gRPC refuses a message over --max-message-bytes itself (RESOURCE_EXHAUSTED, before any
    code of ours runs): uncounted. The native server queued such a call before gRPC refused
    it, listed it with the calls that died queued, and counted most as CANCELLED, model ""
    (9 to 19 of 20 in a row): clients sending too much looked like clients giving up. Read
    once the server has stopped: its drain counts the calls that died queued after gRPC has
    ended every call (a running server counts them ten times a second: a wait for that could
    end first, and pass)."""
    settings = local_settings(model_repository=model_repository, grpc_server=grpc_server,
                              max_request_images=2, max_message_bytes=2600, poll_interval=0)
    before = requests_total()
    with running_server(settings) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Classify(classifier_pb.ClassifyRequest(images=[bytes(784)] * 4), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub.Classify(classifier_pb.ClassifyRequest(images=[bytes(784)]), timeout=10)
    counted = {labels: count - before.get(labels, 0.0)
               for labels, count in requests_total().items() if count != before.get(labels)}
    assert counted == {(("api", "domain"), ("code", "OK"), ("method", "Classify"),
                        ("model", "mlp")): 1.0}


def requests_total() -> dict[tuple, float]:
    """This process's fmnist_requests_total by labels (its servers' calls since pytest began)."""
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in REGISTRY.collect() for sample in family.samples
            if sample.name == "fmnist_requests_total"}
