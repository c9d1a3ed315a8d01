"""Shared fixtures. Serving: a tiny ONNX model repository (no TensorFlow needed) and real
servers on 127.0.0.1:0, in-process (the server runs on its own threads), per test
(``server``) or per module (``thread_server``)."""

import asyncio
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from common.contract import CLASS_NAMES, PIXELS
from common.dataset import load_test_set
from fashion_mnist.v1 import classifier_pb2_grpc
from serving import native
from serving.batching import BatchingPolicy
from serving.server import ModelServer
from serving.settings import GRPC_SERVERS, Settings
from tests.pki import Pki, make_pki
from training.preprocessing import prepend_preprocessing
from training.repository import write_version

# Servers the tests start as processes serve HTTP only where a test asks for a port: the
# default, 8080, is one port for the whole machine.
os.environ.setdefault("FMNIST_HTTP_PORT", "0")

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


def publish_mlp_v3(root: Path, target: str) -> None:
    """Writes a tiny mlp v3 into the repository at ``root`` and waits (10 s at most) until the
    server at ``target`` has loaded it: a version published in the middle of a run."""
    from serving.client.api import ClassifierClient

    write_version(root, "mlp", tiny_classifier(9), {"description": "v3"})
    with ClassifierClient(target) as client:
        deadline = time.monotonic() + 10
        while client.get_model("mlp").version != 3:
            assert time.monotonic() < deadline, "mlp v3 was never loaded"
            time.sleep(0.02)


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


def rewrite_manifest(path: Path, **changes) -> None:
    """Changes fields of a version's ``model.json`` (a test damaging or moving a version)."""
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


@pytest.fixture
def policy() -> BatchingPolicy:
    return BatchingPolicy()


@pytest.fixture
def restore_logging():
    """``cli.main`` sets up logging on the test's captured stderr; later tests need it back."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:], logging.root.level = handlers, level


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A throw-away CA with server and client certificates (tests/pki.py), per module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real Fashion-MNIST test images and labels."""
    return load_test_set()


_held_ports: list[socket.socket] = []


def held_port() -> int:
    """A port for a server that must be told it ahead (HTTP, health, metrics: 0 turns them off;
    a command line's), held until the test ends. A port merely found free was the kernel's to
    hand to the next bind(0) or connect() of any process before the server bound it (seen:
    another bind(0) got it after ~2,400 tries). Held so, bound on every address and not
    listening with SO_REUSEADDR, it is handed to no one, while a server, whose listeners all
    set SO_REUSEADDR, binds and listens on it; nothing listens there but that server."""
    try:
        holder = _bound_holder(socket.AF_INET6, "::")
    except OSError:  # no IPv6 here
        holder = _bound_holder(socket.AF_INET, "0.0.0.0")
    _held_ports.append(holder)
    return holder.getsockname()[1]


def _bound_holder(family: socket.AddressFamily, address: str) -> socket.socket:
    holder = socket.socket(family)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4's port too
        holder.bind((address, 0))
    except OSError:
        holder.close()
        raise
    return holder


@pytest.fixture(autouse=True)
def _release_held_ports():
    """The ports ``held_port`` held for the test, let go once it ends."""
    yield
    while _held_ports:
        _held_ports.pop().close()


def local_settings(**overrides) -> Settings:
    """A test server's settings: loopback, a free gRPC port, one process, no HTTP (tests of
    the HTTP side ask for a port: tests/http_helpers.py)."""
    return Settings(**{"host": "127.0.0.1", "port": 0, "http_port": 0, "workers": 1,
                       **overrides})


@pytest.fixture(scope="session", params=GRPC_SERVERS)
def grpc_server(request) -> str:
    """Each gRPC server implementation (--grpc-server): tests that take it, or ``settings``,
    run on both; native is skipped, saying why, where the extension is not built."""
    if request.param == "native" and not native.available():
        pytest.skip(f"native gRPC server: {native.UNAVAILABLE_REASON}")
    return request.param


@pytest.fixture
def settings(model_repository, grpc_server) -> Settings:
    return local_settings(model_repository=model_repository, parallel_inferences=2,
                          grace_period=5.0, grpc_server=grpc_server)


class running_server:  # noqa: N801 (used as a function)
    """A real server on ``settings``' address (``with`` or ``async with``), drained on exit;
    ``async with`` drains on a thread, so the test's event loop keeps serving its clients."""

    def __init__(self, settings: Settings, grace: float = 1.0):
        self._settings = settings
        self._grace = grace
        self._server: ModelServer | None = None

    def __enter__(self) -> ModelServer:
        self._server = ModelServer.from_settings(self._settings)
        self._server.start()
        return self._server

    def __exit__(self, *_exception) -> None:
        self._server.stop(self._grace)

    async def __aenter__(self) -> ModelServer:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exception) -> None:
        await asyncio.to_thread(self.__exit__, *exception)


@pytest.fixture
def server(settings):
    """A running in-process server; ``server.port`` is its port."""
    with running_server(settings) as running:
        yield running


@pytest.fixture
def fragile_server(repository_copy, grpc_server):
    """A running server whose repository also has ``fragile`` (tests/fragile_model.py): a model
    whose run fails on grey images."""
    from tests.fragile_model import fragile_classifier

    write_version(repository_copy, "fragile", fragile_classifier(), {"description": "fails"})
    settings = local_settings(model_repository=repository_copy, grpc_server=grpc_server)
    with running_server(settings) as running:
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


def reference(model_repository, name: str, version: int, images):
    """onnxruntime's own (probabilities, labels) for ``images`` from a version's file."""
    session = onnxruntime.InferenceSession(model_repository / name / str(version) / "model.onnx")
    return session.run(["probabilities", "label"], {"images": images})


@pytest.fixture(scope="module")
def thread_server(model_repository):
    """A server shared by a module's synchronous tests; its target is ``127.0.0.1:<port>``."""
    settings = local_settings(model_repository=model_repository,
                        parallel_inferences=2, workers=1)
    with running_server(settings) as running:
        yield running


@pytest.fixture
def target(thread_server) -> str:
    """``127.0.0.1:<port>`` of the module's ``thread_server``."""
    return f"127.0.0.1:{thread_server.port}"
