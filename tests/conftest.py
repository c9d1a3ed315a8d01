"""Shared fixtures. Serving: a tiny ONNX model repository (no TensorFlow needed) and real
servers on 127.0.0.1:0, in-process (``server``) or on a thread for synchronous clients
(``thread_server``)."""

import asyncio
import contextlib
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fashion_mnist.v1 import classifier_pb2_grpc
from serving.client.dataset import load_test_set
from serving.server import ModelServer, running_server
from serving.settings import TRANSPORTS, Settings
from training.classes import CLASS_NAMES
from training.preprocessing import PIXELS, prepend_preprocessing
from training.repository import write_version

# (name, seed) of each version written into the fixture repository, in order: mlp has two
# versions so that version selection can be tested.
FIXTURE_VERSIONS = (("softmax", 1), ("mlp", 2), ("mlp", 3), ("baseline", 4))


def tiny_classifier(seed: int) -> onnx.ModelProto:
    """float [N,784] -> Gemm -> Softmax ``probabilities`` and ArgMax ``label``, random weights,
    behind the real uint8 preprocessing prefix."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, (PIXELS, len(CLASS_NAMES))).astype(np.float32)
    bias = rng.normal(0, 0.5, len(CLASS_NAMES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        f"tiny_{seed}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", PIXELS])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                          ["N", len(CLASS_NAMES)]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return prepend_preprocessing(model)


def write_fixture_repository(root: Path) -> Path:
    for name, seed in FIXTURE_VERSIONS:
        write_version(
            root, name, tiny_classifier(seed),
            {"description": f"tiny random {name} (seed {seed})",
             "metrics": {"test_accuracy": 0.1 * seed}},
        )
    (root / "reports").mkdir()  # not a model: no version directories
    (root / "reports" / "report.md").write_text("# not a model\n")
    (root / "mlp" / ".staging-leftover").mkdir()  # an interrupted write: ignored
    return root


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """A read-only repository: softmax v1, mlp v1 and v2, baseline v1 (tiny random models)."""
    return write_fixture_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture
def repository_copy(model_repository, tmp_path) -> Path:
    """A copy of the fixture repository that a test may damage."""
    return Path(shutil.copytree(model_repository, tmp_path / "repository"))


@pytest.fixture(scope="session")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real Fashion-MNIST test images and labels."""
    return load_test_set()


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    """Each of the server's transports: tests that take it run once per transport."""
    return request.param


@pytest.fixture
def settings(model_repository, transport) -> Settings:
    return Settings(host="127.0.0.1", port=0, model_repository=model_repository,
                    worker_threads=2, grace_period=5.0, transport=transport)


@pytest.fixture
async def server(settings):
    """A running in-process server; ``server.port`` is its port."""
    async with running_server(settings) as running:
        yield running


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture
def stub(channel) -> classifier_pb2_grpc.ClassifierStub:
    return classifier_pb2_grpc.ClassifierStub(channel)


@pytest.fixture
def first_refusal():
    """``await first_refusal(call)`` calls ``call()`` until the server refuses it and returns
    the error: a draining server keeps answering for HEALTH_NOTICE_SECONDS after health said
    NOT_SERVING, and must refuse within a second."""

    async def until_refused(call, within_s: float = 1.0) -> grpc.aio.AioRpcError:
        deadline = time.monotonic() + within_s
        while True:
            try:
                await call()
            except grpc.aio.AioRpcError as error:
                return error
            assert time.monotonic() < deadline, f"still answering {within_s} s after NOT_SERVING"

    return until_refused


@contextlib.contextmanager
def server_on_thread(settings: Settings):
    """A real server on its own event loop thread, for synchronous clients and CLIs."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()

    async def start() -> ModelServer:
        started = ModelServer.from_settings(settings)
        await started.start()
        return started

    try:
        running = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        try:
            yield running
        finally:
            asyncio.run_coroutine_threadsafe(running.stop(1.0), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def thread_server(model_repository):
    """A server shared by a module's synchronous tests; its target is ``127.0.0.1:<port>``."""
    settings = Settings(host="127.0.0.1", port=0, model_repository=model_repository,
                        worker_threads=2)
    with server_on_thread(settings) as running:
        yield running

