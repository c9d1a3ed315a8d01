"""Deadlines are honoured: a request whose deadline passes while it waits for the model gets
DEADLINE_EXCEEDED and is never computed, which Triton's statistics (images and onnxruntime calls
per model version) prove; a call whose client gave up while it waited for a thread costs no
Python work."""

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_metrics import scrape, value

from common.contract import CLASS_NAMES, PIXELS
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from serving.errors import Cancelled, DeadlineExceeded
from serving.grpc_transport import grpc_server as make_grpc_server
from serving.pipeline import Admission, Call, CallPipeline
from tests.conftest import held_port, running_server
from tests.echo_service import SERVICE, Echo, started
from tests.server_process import server_process
from training.preprocessing import prepend_preprocessing
from training.repository import write_version

SLOW_BATCH = 4096  # images: about 0.3 s of one onnxruntime thread for slow_classifier()


def slow_classifier(width: int = 1024, layers: int = 12) -> onnx.ModelProto:
    """A deep stack of wide MatMuls: the same signature as the served models, slow on purpose,
    so that a request can be made to wait behind another."""
    rng = np.random.default_rng(0)
    nodes, weights, features, size = [], [], "features", PIXELS
    for layer in range(layers):
        name = f"w{layer}"
        weights.append(numpy_helper.from_array(
            rng.normal(0, size**-0.5, (size, width)).astype(np.float32), name))
        nodes.append(helper.make_node("MatMul", [features, name], [f"h{layer}"]))
        features, size = f"h{layer}", width
    weights.append(numpy_helper.from_array(
        rng.normal(0, 0.05, (size, len(CLASS_NAMES))).astype(np.float32), "out"))
    nodes += [
        helper.make_node("MatMul", [features, "out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", PIXELS])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["N", len(CLASS_NAMES)]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return prepend_preprocessing(model)


def infer_request(count: int) -> pb.ModelInferRequest:
    images = np.zeros((count, 28, 28), np.uint8)
    return pb.ModelInferRequest(
        model_name="slow",
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="UINT8", shape=images.shape)],
        raw_input_contents=[images.tobytes()],
    )


async def slow_statistics(v2) -> pb.InferStatistics:
    response = await v2.ModelStatistics(pb.ModelStatisticsRequest(name="slow"))
    (statistics,) = response.model_stats
    return statistics


@pytest.fixture
async def slow_server(repository_copy, settings):
    write_version(repository_copy, "slow", slow_classifier(), {"description": "slow on purpose"})
    one_thread = dataclasses.replace(settings, model_repository=repository_copy,
                                     parallel_inferences=1, intra_op_threads=1,
                                     max_request_images=SLOW_BATCH)
    async with running_server(one_thread) as server:
        yield server


async def until_the_slot_is_taken(server, within_s: float = 30) -> None:
    """Waits until a request holds the only onnxruntime slot of the "slow" version, so that
    requests sent next queue behind it: a sleep instead was outlasted on a loaded machine, and
    a request sent after it then ran alone, first. Neither the in-flight gauge nor the
    statistics show it (a call is counted in before it is parsed and reaches the batcher)."""
    batcher = server.registry.get("slow")._batcher
    deadline = time.monotonic() + within_s
    while batcher._running == 0:
        assert time.monotonic() < deadline, f"no request took the slot within {within_s} s"
        await asyncio.sleep(0.005)


async def test_a_request_whose_deadline_passes_in_the_queue_is_not_computed(slow_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow_server.port}") as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        before = await slow_statistics(v2)  # the metrics outlive servers of earlier tests

        def computed(statistics: pb.InferStatistics) -> tuple[int, int]:
            return (statistics.inference_count - before.inference_count,
                    statistics.execution_count - before.execution_count)

        occupying = asyncio.ensure_future(v2.ModelInfer(infer_request(SLOW_BATCH)))
        await until_the_slot_is_taken(slow_server)

        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await v2.ModelInfer(infer_request(3), timeout=0.1)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        assert list((await occupying).outputs[0].shape) == [SLOW_BATCH, 10]
        # a live request is still computed; queued after the expired one, with one slot, its
        # answer comes after the expired one was computed (alone or in its batch) or dropped
        await v2.ModelInfer(infer_request(3), timeout=30)
        assert computed(await slow_statistics(v2)) == (SLOW_BATCH + 3, 2)


@pytest.mark.parametrize("gone", [Call("/fashion_mnist.v1.Classifier/Classify",
                                       is_active=lambda: False),
                                  Call("/fashion_mnist.v1.Classifier/Classify",
                                       deadline=time.monotonic() - 1)], ids=["cancelled", "late"])
def test_a_call_over_before_its_turn_is_neither_parsed_nor_logged_loudly(gone, caplog):
    """A call cancelled (or past its deadline) while it waited for a thread was still parsed
    and checked, then logged at WARNING: a client cancelling calls of 1,024 images in a loop
    filled the worker's memory and the log (one line each)."""
    parsed = []
    with caplog.at_level(logging.DEBUG), pytest.raises((Cancelled, DeadlineExceeded)):
        CallPipeline("", Admission()).unary(gone, lambda request, call: request, b"request",
                                            parse=parsed.append)
    assert parsed == []
    assert [record.levelno for record in caplog.records
            if record.getMessage() == "request failed"] == [logging.DEBUG]


class _SeenMethods(grpc.ServerInterceptor):
    """Records the method (and x-asked metadata) of every call a Python thread takes."""

    def __init__(self):
        self.methods: list[str] = []
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        with self._lock:
            self.methods.append(handler_call_details.method)
            self.asked.append(dict(handler_call_details.invocation_metadata).get("x-asked"))
        return continuation(handler_call_details)


@contextlib.contextmanager
def _one_thread_at_work():
    """A native server of Echo whose threads take new calls while at most one is at work, what
    its interceptor saw, the Unary method's stub and the server."""
    echo, seen = Echo(), _SeenMethods()
    server = make_grpc_server("native", 8, [seen], 1 << 20, reuse_port=False, max_running=1)
    port = started(server, echo.handler())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield echo, seen, channel.unary_unary(f"/{SERVICE}/Unary"), server
    finally:
        echo.release.set()
        server.stop(0).wait()


def test_calls_whose_clients_gave_up_while_queued_never_reach_a_python_thread():
    """The native server finishes a queued call in C++ once its client cancels it or its
    deadline passes: before, each such call still took a pool thread (method lookup,
    interceptors, the pipeline's checks), so a flood of calls with short deadlines kept the
    threads busy with dead calls and live ones got no answer in time (0 OK/s)."""
    with _one_thread_at_work() as (echo, seen, unary, server):
        holding = unary.future(b"hold", timeout=30)  # the one thread at work, in Python
        assert echo.holding.wait(5)
        given_up = [unary.future(b"late", timeout=0.2) for _ in range(20)]
        assert {future.exception(5).code() for future in given_up} == \
            {grpc.StatusCode.DEADLINE_EXCEEDED}
        dead, deadline = [], time.monotonic() + 10  # the server hears of each end (its own
        while len(dead) < len(given_up):  # deadline passed too): finished in C++, listed
            assert time.monotonic() < deadline, f"{len(dead)} of 20 listed dead in 10 s"
            dead += server.dead_calls()
            time.sleep(0.01)
        echo.release.set()
        assert holding.result(5).startswith(b"None|True|")
        assert unary(b"hi", timeout=5) == b"None|True|True"
        assert seen.methods == [f"/{SERVICE}/Unary"] * 2


def test_while_the_oldest_queued_call_is_near_its_deadline_the_newest_go_first():
    """Past capacity, oldest first answers few calls in time (each waits about as long as the
    clients' deadlines): while the oldest queued call is within 10 ms of its deadline,
    threads take the newest calls first. A queue of calls without deadlines keeps its order."""

    def taken(calls: list[tuple[str, float | None]], release_after: float) -> list[str]:
        """Queues ``calls`` (name, timeout) behind one that holds the one thread at work,
        and releases it ``release_after`` s after the first was sent: the names, in the order
        threads took them."""
        echo.holding.clear()
        echo.release.clear()
        holding = unary.future(b"hold", timeout=30)
        assert echo.holding.wait(5)
        sent = time.monotonic()
        queued = [unary.future(b"hi", timeout=timeout, metadata=(("x-asked", name),))
                  for name, timeout in calls]
        time.sleep(max(0.0, sent + release_after - time.monotonic()))
        echo.release.set()
        holding.result(5)
        for future in queued:
            future.exception(5)  # answered, or past its deadline
        return [name for name in seen.asked if name in dict(calls)]

    with _one_thread_at_work() as (echo, seen, unary, _server):
        assert taken([("a", None), ("b", None), ("c", None)], 0.2) == ["a", "b", "c"]
        # Released 5 ms before the first call's deadline, which is then late if its headers
        # reached the server within 5 ms, and alive if a thread is back within 5 ms: a timing
        # that misses either is tried again (oldest first never gives d).
        for attempt in range(5):
            late, c, d = f"late{attempt}", f"c{attempt}", f"d{attempt}"
            order = taken([(late, 0.5), (c, None), (d, None)], 0.495)
            if order[0] == d:
                break
        assert order[:2] == [d, c]


def test_calls_whose_clients_gave_up_while_queued_are_counted(repository_copy, grpc_server,
                                                              request):
    """A call that dies waiting for a call thread counts in ``fmnist_requests_total`` by the
    status its client got: the native server finished such calls in C++ uncounted, so the
    metrics of an overloaded server hid the calls it lost. grpcio drops them before any code
    of ours runs (README, "Metrics"). A path the server does not serve is not counted (each
    would be a series of its own), and one that is not UTF-8 stopped the count, the
    heartbeat and the drain on SIGTERM."""
    if grpc_server == "grpcio":
        request.applymarker(pytest.mark.xfail(strict=True, reason="grpcio drops them unseen"))
    write_version(repository_copy, "slow", slow_classifier(), {"description": "slow on purpose"})
    metrics_port = held_port()
    with server_process(repository_copy, "--workers", "1", "--grpc-server", grpc_server,
                        "--call-threads", "2", "--parallel-inferences", "1",
                        "--max-request-images", str(SLOW_BATCH), "--poll-interval", "0",
                        "--metrics-port", str(metrics_port)) as (process, logs):
        target = logs.wait_for("serving")[0]["address"]

        def counts() -> tuple[float, float]:
            samples = scrape(metrics_port)
            return tuple(value(samples, "fmnist_requests_total", api="v2", method="ModelInfer",
                               model="", code=code) for code in ("DEADLINE_EXCEEDED", "CANCELLED"))

        with grpc.insecure_channel(target) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            v2.ModelInfer(infer_request(1), timeout=30)  # loaded, warm
            before = counts()
            holding = [v2.ModelInfer.future(infer_request(SLOW_BATCH), timeout=30)
                       for _ in range(2)]  # both call threads, for 0.6 s or so
            deadline = time.monotonic() + 10  # until both hold a call thread (counted in)
            while value(scrape(metrics_port), "fmnist_requests_in_flight") < 2:
                assert time.monotonic() < deadline, "the two calls held no call thread in 10 s"
                time.sleep(0.005)
            given_up = [v2.ModelInfer.future(infer_request(1), timeout=0.1) for _ in range(5)]
            cancelled = v2.ModelInfer.future(infer_request(1), timeout=30)
            strays = [channel.unary_unary(path).future(b"", timeout=0.1)
                      for path in (b"/\xff\xfe.Svc/M", "/fashion_mnist.v1.Classifier/Nope")]
            time.sleep(0.05)
            cancelled.cancel()
            assert {future.exception(5).code() for future in given_up} == \
                {grpc.StatusCode.DEADLINE_EXCEEDED}
            for future in holding:
                future.result(30)
            assert all(stray.exception(5) is not None for stray in strays)
        counted = (0.0, 0.0)
        for _ in range(50):  # the native server's are counted within a tenth of a second
            counted = tuple(now - then for now, then in zip(counts(), before, strict=True))
            if counted == (5, 1):
                break
            time.sleep(0.1)
        series = [dict(labels) for name, labels in scrape(metrics_port)
                  if name == "fmnist_requests_total"]
        assert {labels["method"] for labels in series} == {"ModelInfer"}
        process.terminate()
        assert process.wait(30) == 0
        assert counted == (5, 1)
