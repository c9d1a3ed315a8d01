"""An HTTP call whose client goes away before its answer is handed over: CANCELLED (499) in
the metrics and the log, as over gRPC, not OK."""

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
    write_version(repository_copy, "slow", slow_classifier(), {"description": "slow on purpose"})
    metrics_port = held_port()
    settings = http_settings(repository_copy, metrics_port=metrics_port, parallel_inferences=1,
                             intra_op_threads=1, max_request_images=SLOW_BATCH)
    images = np.zeros((SLOW_BATCH, 28, 28), np.uint8).tobytes()
    header = json.dumps({"inputs": [{
        "name": "images", "datatype": "UINT8", "shape": [SLOW_BATCH, 28, 28],
        "parameters": {"binary_data_size": len(images)}}]}).encode()
    labels = {"api": "v2", "method": "ModelInfer", "model": "slow"}
    with http_server(settings) as (server, _url), caplog.at_level(logging.DEBUG):
        before = scrape(metrics_port)
        with socket.create_connection(("127.0.0.1", server.http_port)) as client:
            client.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
                           b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
                           % (len(header), len(header) + len(images)) + header + images)
            _until_computing(server)
        deadline = time.monotonic() + 30  # the batch ends, then its call is counted
        while not any(value(after := scrape(metrics_port), "fmnist_requests_total", **labels,
                            code=code) > value(before, "fmnist_requests_total", **labels,
                                               code=code) for code in ("OK", "CANCELLED")):
            assert time.monotonic() < deadline, "the call was not counted within 30 s"
            time.sleep(0.01)
    counted = {code: value(after, "fmnist_requests_total", **labels, code=code)
               - value(before, "fmnist_requests_total", **labels, code=code)
               for code in ("OK", "CANCELLED")}
    assert counted == {"OK": 0, "CANCELLED": 1}
    assert [record.fields["code"] for record in caplog.records
            if record.getMessage() == "request failed"] == ["CANCELLED"]


def _until_computing(server, within_s: float = 30) -> None:
    """Until the slow version's one onnxruntime slot is taken: the call is being computed."""
    batcher = server.registry.get("slow")._batcher
    deadline = time.monotonic() + within_s
    while batcher._running == 0:
        assert time.monotonic() < deadline, f"no batch was computed within {within_s} s"
        time.sleep(0.005)
