"""The HTTP error contract against a real server: every error row gets its status and the
protocol's ``{"error": ...}`` body with a message naming the field; a wrong Content-Length,
overload, draining and a taken port are refused as the contract says."""

import gzip
import json
import logging
import socket

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
    ("POST", CLASSIFY, b"GIF89a not really", {}, 400, "body: expected a PNG, JPEG"),
    # it said "not an image file it knows", of nothing
    ("POST", CLASSIFY, b"", {}, 400, "body: empty; expected a PNG, JPEG, GIF, BMP, WEBP image"),
    ("POST", CLASSIFY, _json({"images": [[300] * 784]}), {}, 400,
     "images[0]: expected 784 integers 0..255"),
    ("POST", CLASSIFY, _json({"images": [[0] * 100]}), {}, 400,
     "images[0]: expected 784 bytes (28x28 uint8), got 100"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "model": "nope"}), {}, 404, "nope"),
    ("POST", CLASSIFY + "?top=11", _json({"images": [[0] * 784]}), {}, 400, "top: expected"),
    ("GET", "/v1/test-images/10000", b"", {}, 404, "test image 10000"),
    ("POST", CLASSIFY, b"x" * (MAX_BYTES + 1), {}, 413, f"over the server's limit of {MAX_BYTES}"),
    ("POST", CLASSIFY, gzip.compress(b"0" * (MAX_BYTES * 16)), {"Content-Encoding": "gzip"}, 413,
     "once decompressed"),
    ("POST", CLASSIFY, b"{}", {"Content-Encoding": "br"}, 415,  # RFC 9110 (was 400)
     "Content-Encoding: 'br' is not served; use gzip, deflate or none"),
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
     "images[0]: expected 784 integers 0..255"),
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
    # integers past 64 bits, which orjson reads as floats: said as sent, not "1e+23", and not
    # "expected integers" of a shape of integers
    ("POST", INFER, _json({"inputs": [{**IMAGE, "shape": [1, 28, 10**23], "data": [0] * 784}]}),
     {}, 400, f"inputs['images'].shape: dimensions out of range, got [1, 28, {10**23}]"),
    ("POST", INFER, _json({"inputs": [{**IMAGE, "data": [2**64] + [0] * 783}]}), {}, 400,
     f"inputs['images'].data: value 0 (row-major) is {2**64}, not a UINT8 value"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "version": -(2**64)}), {}, 400,
     f"version: expected an integer within int64, got {-(2**64)}"),
    ("POST", CLASSIFY, _json({"images": [[[0] * 784]]}), {}, 400,  # one row of 784
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28)"),
    ("POST", CLASSIFY, _json({"images": [[[0] * 27] + [[0] * 29] + [[0] * 28] * 26]}), {}, 400,
     "images[0]: expected 784 integers 0..255 (or 28 rows of 28)"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "version": 10**20}), {}, 400,
     "version: expected an integer within int64"),
    ("POST", CLASSIFY, _json({"images": [[0] * 784], "request_id": 5}), {}, 400,
     "request_id: expected a string, got 5"),
    ("HEAD", CLASSIFY, b"", {}, 405, ""),
    ("GET", "/v1/models?verbose=1", b"", {}, 400, "verbose: not an option of /v1/models; it "
     "takes none"),
    ("GET", "/v1/models/mlp?verison=1", b"", {}, 400,
     "verison: not an option of /v1/models/{name}; expected version"),
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


@pytest.mark.parametrize("coding", ["gzip", "x-gzip"])  # RFC 9110: x-gzip is gzip (was 400)
def test_a_gzip_body_of_several_members_is_read_whole(url, coding):
    """RFC 1952 allows a gzip body of several members: each is read, in order; zero padding
    after them is ignored, as gzip(1) ignores it."""
    document = _json({"images": [[0] * 784, [255] * 784]})
    body = gzip.compress(document[:100]) + gzip.compress(document[100:]) + bytes(8)  # padding
    answer = requests.post(url + CLASSIFY, data=body, headers={"Content-Encoding": coding},
                           timeout=10)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 2


def test_an_unsupported_content_coding_is_415_and_names_those_served(url):
    """RFC 9110 12.5.3: 415, with Accept-Encoding saying which codings the server decodes."""
    answer = requests.post(url + CLASSIFY, data=b"{}", headers={"Content-Encoding": "br"},
                           timeout=10)
    assert (answer.status_code, answer.headers.get("Accept-Encoding")) == (415, "gzip, deflate")


def test_a_form_is_415_without_the_codings_header(url):
    """A multipart form is refused for its media type, not its coding: Accept-Encoding would
    tell the client to change what it did right."""
    answer = requests.post(url + CLASSIFY, files={"file": ("x.png", VALID)}, timeout=10)
    assert answer.status_code == 415, answer.text
    assert "send the file itself" in answer.json()["error"]
    assert "Accept-Encoding" not in answer.headers


def test_a_transfer_coding_other_than_chunked_is_501(url):
    """RFC 9112 6.1: a transfer coding the server does not understand is 501. granian took
    "gzip, chunked" apart as chunked and passed the gzip bytes on as the body (400, "not an
    image")."""
    body = gzip.compress(VALID)
    answer = raw_exchange(url, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                          b"gzip, chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
                          half_close=False)  # the 501 closes the connection
    assert answer.startswith(b"HTTP/1.1 501 "), answer[:300]
    assert b"Transfer-Encoding: 'gzip, chunked' is not served" in answer


def test_chunked_given_twice_is_400_naming_it(url):
    """RFC 9112 6.1: a sender applies chunked at most once, so "chunked, chunked" (a header a
    proxy doubled) is a malformed request, 400; it was 501 "'chunked,chunked' is not served;
    send the body as it is or chunked", telling a client that sent chunked to send chunked."""
    for headers in (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                    b"Transfer-Encoding: chunked, Chunked\r\n"):
        answer = raw_exchange(url, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n" + headers
                              + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(VALID), VALID),
                              half_close=False)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
        assert answer.endswith(b'{"error":"Transfer-Encoding: chunked given more than once; '
                               b'a body is chunked once (RFC 9112 6.1)"}'), answer[-300:]


def raw_exchange(url: str, request: bytes, half_close: bool = True) -> bytes:
    """What the server sends back for ``request`` bytes, until it closes or goes quiet;
    ``half_close``: say so after the request (granian drops a chunked request then)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(request)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


VALID = _json({"images": [[0] * 784]})


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{\"images\": []}",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n{}",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(VALID) + 10, VALID),  # then the client stops sending: was classified, 200
], ids=["body-longer", "not-a-number", "negative", "body-shorter"])
def test_a_wrong_content_length_is_400(url, request_bytes):
    statuses = [line.split()[1] for line in raw_exchange(url, request_bytes).split(b"\r\n")
                if line.startswith(b"HTTP/1.1 ")]
    assert statuses and set(statuses) == {b"400"}, statuses


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


def test_a_chunked_body_over_the_limit_is_413_gzip_or_not(url):
    """Read without a Content-Length, the body was cut at the limit and then decompressed:
    "the gzip data ends early" instead of 413."""
    for body, headers in ((b"x" * (MAX_BYTES + 1), {}),
                          (gzip.compress(np.random.default_rng(0).bytes(MAX_BYTES + 99)),
                           {"Content-Encoding": "gzip"})):
        answer = requests.post(url + CLASSIFY, data=iter([body]), headers=headers, timeout=10)
        assert answer.status_code == 413, answer.text
        assert f"over the server's limit of {MAX_BYTES}" in answer.json()["error"]


def test_a_body_refused_unread_closes_the_connection_and_a_read_one_keeps_it(url):
    """The unread rest of a refused body would be read as the client's next request."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", CLASSIFY, body=VALID)
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200 and answer.getheader("Connection") != "close"
        connection.request("POST", "/v3/nothing", body=bytes(1000))
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 404 and answer.getheader("Connection") == "close"
    finally:
        connection.close()
