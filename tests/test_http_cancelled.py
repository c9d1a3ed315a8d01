"""An HTTP call whose client goes away before its answer is handed over: CANCELLED (499) in
the metrics and the log, as over gRPC, not OK."""

import contextlib
import json
import logging
import socket
import time

import numpy as np

from tests.conftest import held_port
from tests.http_helpers import http_server, http_settings
from tests.test_deadlines import SLOW_BATCH, slow_classifier
from tests.test_metrics import scrape, value
from training.repository import write_version


def test_a_client_gone_while_its_call_is_computed_is_counted_cancelled(repository_copy, caplog):
    """The client sends a batch the slow model takes ~0.3 s over and closes its connection
    once the batch is being computed: granian dropped the answer and the call was counted OK
    (and logged nothing), where gRPC counts a call its client cancels CANCELLED."""
    with _slow_server(repository_copy) as (server, metrics_port), caplog.at_level(logging.DEBUG):
        before = scrape(metrics_port)
        with socket.create_connection(("127.0.0.1", server.http_port)) as client:
            client.sendall(_SLOW_REQUEST)
            _until_computing(server)
        assert _counted(metrics_port, before) == {"OK": 0, "CANCELLED": 1}
    assert [record.fields["code"] for record in caplog.records
            if record.getMessage() == "request failed"] == ["CANCELLED"]


def test_a_slow_call_whose_client_waits_is_answered_whole_and_counted_ok(repository_copy):
    """The other side of the hand-over: a client still there when a call of 0.1 s or more
    ends gets its whole answer, and the call counts OK (a hand-over that said "gone" of every
    client counted each slow call CANCELLED, unseen by the test above)."""
    with _slow_server(repository_copy) as (server, metrics_port):
        before = scrape(metrics_port)
        with socket.create_connection(("127.0.0.1", server.http_port)) as client:
            client.sendall(_SLOW_REQUEST)
            answer = client.makefile("rb")
            assert answer.readline().startswith(b"HTTP/1.1 200")
            headers = list(iter(answer.readline, b"\r\n"))
            length = next(int(line.split(b":")[1]) for line in headers
                          if line.lower().startswith(b"content-length:"))
            labels = json.loads(answer.read(length))["outputs"][0]["data"]
        assert len(labels) == SLOW_BATCH
        assert _counted(metrics_port, before) == {"OK": 1, "CANCELLED": 0}


_IMAGES = np.zeros((SLOW_BATCH, 28, 28), np.uint8).tobytes()
_HEADER = json.dumps({"inputs": [{
    "name": "images", "datatype": "UINT8", "shape": [SLOW_BATCH, 28, 28],
    "parameters": {"binary_data_size": len(_IMAGES)}}],
    "outputs": [{"name": "label", "parameters": {"binary_data": False}}]}).encode()
_SLOW_REQUEST = (b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
                 % (len(_HEADER), len(_HEADER) + len(_IMAGES)) + _HEADER + _IMAGES)
_LABELS = {"api": "v2", "method": "ModelInfer", "model": "slow"}


@contextlib.contextmanager
def _slow_server(repository_copy):
    """``(server, metrics port)``: HTTP with a model slow on purpose, one batch at a time."""
    write_version(repository_copy, "slow", slow_classifier(), {"description": "slow on purpose"})
    metrics_port = held_port()
    settings = http_settings(repository_copy, metrics_port=metrics_port, parallel_inferences=1,
                             intra_op_threads=1, max_request_images=SLOW_BATCH)
    with http_server(settings) as (server, _url):
        yield server, metrics_port


def _counted(metrics_port: int, before: dict) -> dict[str, float]:
    """The slow model's ModelInfer calls counted OK and CANCELLED since ``before``, once one
    is (the batch ends, then its call is counted)."""
    deadline = time.monotonic() + 30
    while True:
        after = scrape(metrics_port)
        counted = {code: value(after, "fmnist_requests_total", **_LABELS, code=code)
                   - value(before, "fmnist_requests_total", **_LABELS, code=code)
                   for code in ("OK", "CANCELLED")}
        if any(counted.values()):
            return counted
        assert time.monotonic() < deadline, "the call was not counted within 30 s"
        time.sleep(0.01)


def _until_computing(server, within_s: float = 30) -> None:
    """Until the slow version's one onnxruntime slot is taken: the call is being computed."""
    batcher = server.registry.get("slow")._batcher
    deadline = time.monotonic() + within_s
    while batcher._running == 0:
        assert time.monotonic() < deadline, f"no batch was computed within {within_s} s"
        time.sleep(0.005)
