"""The HTTP error contract against a real server: every error row gets its status and the
protocol's ``{"error": ...}`` body with a message naming the field; overload, draining and a
taken port are refused as the contract says (the body's framing: test_http_framing.py)."""

import gzip
import json
import logging
from urllib.parse import unquote

import numpy as np
import pytest
import requests

from serving.server import ListenError, ModelServer
from tests.http_helpers import http_settings
from tests.test_http_api import MAX_BYTES, MAX_IMAGES, binary_infer, served, url

__all__ = ["served", "url"]  # the fixtures, shared with tests/test_http_api.py


CLASSIFY = "/v1/classify"
INFER = "/v2/models/mlp/infer"
IMAGE = {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28]}


def _json(document) -> bytes:
    return json.dumps(document).encode()


VALID = _json({"images": [[0] * 784]})


@pytest.mark.parametrize("case", [
    ("POST", INFER, b"{oops", {}, 400, "request body: not valid JSON"),
    ("POST", INFER, b"{}", {"Inference-Header-Content-Length": "999"}, 400,
     "Inference-Header-Content-Length: 999 points past the end of the body"),
    # said "Exceeds the limit (4300 digits) for integer string conversion ...", Python's
    ("POST", INFER, b"{}", {"Inference-Header-Content-Length": "9" * 5000}, 400,
     f"Inference-Header-Content-Length: {'9' * 900}"),  # messages are cut at 1,000
    ("POST", INFER, b"{}", {"Inference-Header-Content-Length": "0" * 5000 + "9"}, 400,
     f"Inference-Header-Content-Length: {'0' * 900}"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "shape": [True, None, "1"]}]}), {}, 400,
     "inputs['images'].shape: expected integers, got [true, null, \"1\"]"),  # not [True, None, '1']
    ("POST", INFER, _json({"inputs": [{**IMAGE, "parameters": {"binary_data_size": 784}}]}),
     {}, 400, "inputs['images'].parameters.binary_data_size: 784 bytes at offset"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "datatype": "FP32", "data": [0.0] * 784}]}),
     {}, 400, "inputs['images'].datatype: expected UINT8, got 'FP32'"),
    # an input without data is said so only where the data plane asks no more basic question
    ("POST", INFER, _json({"inputs": [{**IMAGE, "datatype": "FP32"}]}),
     {}, 400, "inputs['images'].datatype: expected UINT8, got 'FP32'"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "data": [0] * 784}, {**IMAGE, "name": "x"}]}),
     {}, 400, "inputs: expected one input 'images', got"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "data": []}]}),
     {}, 400, "inputs['images']: no data; expected data, or parameters.binary_data_size"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "shape": [9, 28, 28], "data": [0] * 9 * 784}]}),
     {}, 400, f"expected at most {MAX_IMAGES} images"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "data": [0] * 784}],
                           "outputs": [{"name": "label", "parameters": {"classification": 2}}]}),
     {}, 400, "classification applies to 'probabilities' only"),
    ("POST", "/v2/models/mlp/versions/x/infer", _json({"inputs": []}), {}, 400,
     "model_version: expected"),
    ("POST", "/v2/models/nope/infer", _json({"inputs": [{**IMAGE, "data": [0] * 784}]}), {}, 404,
     "nope"),
    # the body's fault was said first, where gRPC and Triton say the unknown model
    ("POST", "/v2/models/nope/infer", b"{oops", {}, 404, "model_name: no model 'nope'"),
    ("POST", "/v2/models/nope/infer", bytes(1568), {"Inference-Header-Content-Length": "0"}, 404,
     "model_name: no model 'nope'"),
    ("POST", "/v2/models/mlp/versions/7/infer", b"{oops", {}, 404,
     "model_version: model 'mlp' has no version 7"),
    ("POST", "/v2/models/mlp/versions/7/infer", _json({"inputs": [{**IMAGE, "data": [0] * 784}]}),
     {}, 404, "model_version: model 'mlp' has no version 7"),  # named as ModelInfer names it
    ("GET", "/v2/models/mlp/versions/99", b"", {}, 404, "99"),
    ("GET", "/v3", b"", {}, 404, "no endpoint GET /v3"),
    # a regex's "$" matched before a final newline: these were /v2/health/ready's 200 and
    # the infer route's 400
    ("GET", "/v2/health/ready%0A", b"", {}, 404, "no endpoint GET /v2/health/ready\\n:"),
    ("POST", INFER + "%0A", b"{}", {}, 404, "no endpoint POST /v2/models/mlp/infer\\n:"),
    ("POST", "/v2/models/mlp%0A", b"", {}, 405, "POST /v2/models/mlp\\n: use GET"),  # one line
    ("GET", INFER, b"", {}, 405, "GET /v2/models/mlp/infer: use POST"),
    ("PUT", INFER, b"{}", {}, 405, "PUT /v2/models/mlp/infer: use POST"),  # known, not here
    # RFC 9110 9.1: a method the server does not recognise is 501 on any path (it was 405)
    ("FOO", INFER, b"{}", {}, 501, "FOO: not a method this server knows; it serves GET, HEAD"),
    ("FOO", "/v3", b"", {}, 501, "FOO: not a method this server knows; it serves GET, HEAD"),
    ("POST", CLASSIFY, b"GIF89a not really", {}, 400, "body: expected a PNG, JPEG"),
    # it said "not an image file it knows", of nothing
    ("POST", CLASSIFY, b"", {}, 400, "body: empty; expected a PNG, JPEG, GIF, BMP, WEBP image"),
    ("POST", CLASSIFY, _json({"images": [[300] * 784]}), {}, 400,
     "images[0]: expected 784 integers 0..255"),
    ("POST", CLASSIFY, _json({"images": [[0] * 100]}), {}, 400,
     "images[0]: expected 784 pixels (28x28 uint8), got 100"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "model": "nope"}), {}, 404, "nope"),
    ("POST", CLASSIFY + "?top=11", _json({"images": [[0] * 784]}), {}, 400, "top: expected"),
    ("GET", "/v1/test-images/10000", b"", {}, 404, "test image 10000"),
    ("POST", CLASSIFY, b"x" * (MAX_BYTES + 1), {}, 413, f"over the server's limit of {MAX_BYTES}"),
    ("POST", CLASSIFY, gzip.compress(b"0" * (MAX_BYTES * 16)), {"Content-Encoding": "gzip"}, 413,
     "once decompressed"),
    ("POST", CLASSIFY, b"{}", {"Content-Encoding": "br"}, 415,  # RFC 9110 (was 400)
     "Content-Encoding: 'br' is not served; use gzip, deflate or none"),
    # a body compressed twice was told "'gzip, gzip' is not served; use gzip, ...", gzip itself
    ("POST", CLASSIFY, gzip.compress(gzip.compress(VALID)), {"Content-Encoding": "gzip, gzip"},
     415, "Content-Encoding: 'gzip, gzip' is 2 codings, one applied over another; one is "
     "served (gzip or deflate): compress the body once"),
    ("POST", CLASSIFY, gzip.compress(_json({"images": [[0] * 784]})) + b"junk",
     {"Content-Encoding": "gzip"}, 400, "request body: not valid gzip data"),
    ("POST", CLASSIFY, gzip.compress(_json({"images": [[0] * 784]}))[:-9],
     {"Content-Encoding": "gzip"}, 400, "request body: the gzip data ends early"),
    # a path's or query's integer: "--5" crashed int() (500), a huge one the protobuf (400)
    ("GET", "/v1/test-images/--5", b"", {}, 400,
     "test image index: expected an integer, got '--5'"),
    ("POST", CLASSIFY + "?version=99999999999999999999", _json({"images": [[0] * 784]}), {},
     400, "version: 99999999999999999999 is out of range"),
    ("GET", "/v1/test-images/" + "1" * 5000, b"", {}, 400,  # past int()'s 4300 digits
     "test image index: " + "1" * 40 + " is out of range"),
    ("POST", CLASSIFY, gzip.compress(b"") * 17 + gzip.compress(b"{}"),
     {"Content-Encoding": "gzip"}, 400, "request body: more than 16 gzip members"),
    ("POST", CLASSIFY, _json({"images": [[True] * 784]}), {}, 400,
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28), got true at 0"),
    # said only what it expected, of 784 good values but one: which one, and what it is
    ("POST", CLASSIFY, _json({"images": [[0] * 783 + [256]]}), {}, 400,
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28), got 256 at 783"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784, [[0] * 28] * 27 + [[0.5] * 28]]}), {},
     400, "images[1]: expected 784 integers 0..255 (or 28 rows of 28), got 0.5 at 756"),
    ("POST", CLASSIFY, _json({"images": ["AAAA"]}), {}, 400,
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28), got \"AAAA\""),
    ("POST", CLASSIFY, b"[1]", {}, 400, "request body: expected a JSON object"),
    ("POST", CLASSIFY, b"plain text", {}, 400, "(not an image file it knows)"),
    # curl -F file=@x.png: was 400 "not an image file it knows", of a good PNG
    ("POST", CLASSIFY, b"--b\r\n\r\n", {"Content-Type": "multipart/form-data; boundary=b"},
     415, "Content-Type: multipart/form-data is not served; send the file itself as the body"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "parameters": {"binary_data_size": 784}}]})
     + bytes(784), {}, 400, "needs the Inference-Header-Content-Length header"),
    # a misspelt option or key was ignored: the answer came from another model, or top 3
    ("POST", CLASSIFY + "?modle=softmax", _json({"images": [[0] * 784]}), {}, 400,
     "modle: not an option of /v1/classify; expected model, version, top"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "top": 1}), {}, 400,
     "top: not a key of the request; expected images, model, version, request_id"),
    ("POST", CLASSIFY + "?top=", _json({"images": [[0] * 784]}), {}, 400,
     "top: expected an integer, got ''"),
    ("POST", CLASSIFY, _json({"images": [[[0] * 784]]}), {}, 400,  # one row of 784
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28), got 1 row"),
    ("POST", CLASSIFY, _json({"images": [[[0] * 27] + [[0] * 29] + [[0] * 28] * 26]}), {}, 400,
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28), got 27 values in row 0"),
    ("POST", CLASSIFY, _json({"images": [[[0] * 28] * 27 + [7]]}), {}, 400,
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28), got 7 as row 27"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "version": 10**20}), {}, 400,
     "version: expected an integer within int64"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "request_id": 5}), {}, 400,
     "request_id: expected a string, got 5"),
    ("HEAD", CLASSIFY, b"", {}, 405, ""),
    ("GET", "/v1/models?verbose=1", b"", {}, 400, "verbose: not an option of /v1/models; it "
     "takes none"),
    ("GET", "/v1/models/mlp?verison=1", b"", {}, 400,
     "verison: not an option of /v1/models/{name}; expected version"),
    # an option given twice answered with its last value, silently: another model, or top 3
    ("POST", CLASSIFY + "?model=mlp&model=softmax", _json({"images": [[0] * 784]}), {}, 400,
     "model: given 2 times in the query (mlp, softmax); give it once"),
    ("POST", CLASSIFY + "?top=x&top=3&top=3", _json({"images": [[0] * 784]}), {}, 400,
     "top: given 3 times in the query (x, 3, 3); give it once"),
    ("GET", "/v1/models/mlp?version=1&version=2", b"", {}, 400,
     "version: given 2 times in the query (1, 2); give it once"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "top": 1, "id": "x"}), {}, 400,
     "id, top: not a key of the request"),  # all of them, in one order whatever the process
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "model": None}), {}, 400,
     "model: expected a string, got null"),  # JSON's word, not Python's None
])
def test_every_error_row_has_its_status_and_names_the_field(url, case):
    verb, path, body, headers, status, message = case
    answer = requests.request(verb, url + path, data=body, headers=headers, timeout=10)
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    if verb == "HEAD":
        return
    assert message in answer.json()["error"]
    assert " object at 0x" not in answer.json()["error"]  # no Python internals


def test_draining_is_503_and_the_concurrency_limit_429(served, url, caplog):
    server = served[0]
    server.admission.max_in_flight, server.admission.in_flight = 1, 1  # one call held
    try:
        busy = requests.get(f"{url}/v1/models", timeout=5)
        assert busy.status_code == 429 and "--max-concurrent-calls" in busy.json()["error"]
        for probe in ("live", "ready"):  # health is never refused for want of a slot
            assert requests.get(f"{url}/v2/health/{probe}", timeout=5).status_code == 200
    finally:
        server.admission.max_in_flight, server.admission.in_flight = 0, 0
    server._draining.set()  # what stop() does first, and after its health notice:
    server.admission.accepting = False
    try:
        refused = binary_infer(url, np.zeros((1, 28, 28), np.uint8))
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        # a keep-alive client's next request goes to another server, as after gRPC's GOAWAY
        listed = requests.get(f"{url}/v1/models", timeout=5)
        assert (listed.status_code, listed.headers.get("Connection")) == (503, "close")
        assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 400
        assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    finally:
        server.admission.accepting = True
        server._draining.clear()
    assert binary_infer(url, np.zeros((1, 28, 28), np.uint8)).status_code == 200
    # refusals for the server's state are counted, not logged one warning each: they flooded
    # the log (656 lines in 2 s) while a loaded server drained
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_taken_http_port_fails_the_start_with_one_line(model_repository, url):
    taken = int(url.rsplit(":", 1)[1])
    second = ModelServer.from_settings(http_settings(model_repository, http_port=taken))
    try:
        with pytest.raises(ListenError, match=f"cannot listen for HTTP on 127.0.0.1:{taken}: "):
            second.start()
    finally:
        second.stop(0)


def test_request_id_is_echoed_and_allow_names_head(url):
    answer = requests.post(url + CLASSIFY, timeout=10,
                           data=_json({"images": [[0] * 784], "request_id": "r-7"}))
    assert answer.status_code == 200 and answer.json()["request_id"] == "r-7"
    assert "request_id" not in requests.post(url + CLASSIFY, data=VALID, timeout=10).json()
    refused = requests.post(url + "/v1/models", timeout=10)
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
    assert refused.json()["error"] == "POST /v1/models: use GET or HEAD"
    head = requests.head(url + CLASSIFY, timeout=10)
    assert head.status_code == 405 and head.headers["Allow"] == "POST"
    both = requests.post(url + "/v2/models/stats", timeout=10)  # two routes match the path
    assert both.headers["Allow"] == "GET, HEAD" and both.json()["error"].endswith("GET or HEAD")
    flagged = requests.post(url + CLASSIFY + "?pixels", data=VALID, timeout=10)  # no value: on
    assert len(flagged.json()["results"][0]["pixels"]) == 784


def test_a_model_name_with_an_encoded_slash_is_an_unknown_model(url):
    """/v2/models/a%2Fb/ready reaches the server as /v2/models/a/b/ready (granian decodes the
    path): it was 404 'no endpoint GET /v2/models/a/b/ready'; it is the model 'a/b', which no
    model is (a version directory's name has no '/'), answered as any unknown model's."""
    for name in ("nope", "a%2Fb"):
        ready = requests.get(f"{url}/v2/models/{name}/ready", timeout=10)
        assert (ready.status_code, ready.json()["error"].split(";")[0]) == (
            404, f"name: no model {unquote(name)!r}")
    config = requests.get(f"{url}/v2/models/a%2Fb/versions/1/config", timeout=10)
    assert (config.status_code, config.json()["error"].split(";")[0]) == (
        404, "name: no model 'a/b'")
    infer = requests.post(f"{url}/v2/models/a%2Fb/infer", data=b"{}", timeout=10)
    assert (infer.status_code, infer.json()["error"].split(";")[0]) == (
        404, "model_name: no model 'a/b'")
    typo = requests.get(f"{url}/v2/models/mlp/readyy", timeout=10)  # still no endpoint
    assert typo.status_code == 404 and typo.json()["error"].startswith("no endpoint GET")
