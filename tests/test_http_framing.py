"""How the HTTP transport reads a request's body off the wire, against a real server: content
codings (gzip), transfer codings (chunked), a wrong Content-Length, bodies over the limit, and
which refusals close the connection (the unread rest of a body would be the next request)."""

import gzip
import socket
import time

import numpy as np
import pytest
import requests
from prometheus_client import REGISTRY

from tests.test_http_api import MAX_BYTES, served, url
from tests.test_http_errors import CLASSIFY, VALID, _json

__all__ = ["served", "url"]  # the fixtures, shared with tests/test_http_api.py


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


@pytest.mark.parametrize(("coding", "compress"), [
    ("gzip,", gzip.compress), (", gzip", gzip.compress), ("gzip , ,", gzip.compress),
    (",", bytes), ("", bytes)])
def test_empty_elements_of_the_content_coding_list_are_ignored(url, coding, compress):
    """RFC 9110 5.6.1: a list's empty elements are ignored. `Content-Encoding: gzip,` was 415,
    "'gzip,' is 2 codings, one applied over another"."""
    document = _json({"images": [[0] * 784]})
    answer = requests.post(url + CLASSIFY, data=compress(document),
                           headers={"Content-Encoding": coding}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 1


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


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{\"images\": []}",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n{}",
], ids=["body-longer", "not-a-number", "negative"])
def test_a_wrong_content_length_is_400(url, request_bytes):
    statuses = [line.split()[1] for line in raw_exchange(url, request_bytes).split(b"\r\n")
                if line.startswith(b"HTTP/1.1 ")]
    assert statuses and set(statuses) == {b"400"}, statuses


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


@pytest.mark.parametrize("hang_up", ["close", "half-close"])
def test_a_client_that_stops_sending_mid_body_is_counted_cancelled(url, hang_up):
    """A body cut short of its Content-Length is a client that went away mid-request, as gRPC's
    CANCELLED: it was counted and logged INVALID_ARGUMENT, a bad request (and once classified,
    200). A client that only shut its side for writing reads the answer, 499 (nginx's "client
    closed request"), which says so."""
    def counted(code: str) -> float:
        return REGISTRY.get_sample_value("fmnist_requests_total", {
            "api": "domain", "method": "Classify", "model": "", "code": code}) or 0

    before = {code: counted(code) for code in ("CANCELLED", "INVALID_ARGUMENT")}
    request = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(VALID) + 10, VALID)
    if hang_up == "close":
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            connection.sendall(request)
        waited = time.monotonic() + 10  # the server counts the call once it sees the end
        while counted("CANCELLED") + counted("INVALID_ARGUMENT") == sum(before.values()) \
                and time.monotonic() < waited:
            time.sleep(0.01)
    else:
        answer = raw_exchange(url, request)
        assert answer.startswith(b"HTTP/1.1 499 "), answer[:300]
        assert answer.endswith(b'{"error":"request body: the client stopped sending after %d '
                               b'of its %d bytes (Content-Length)"}' % (
                                   len(VALID), len(VALID) + 10)), answer[-300:]
    assert (counted("CANCELLED") - before["CANCELLED"],
            counted("INVALID_ARGUMENT") - before["INVALID_ARGUMENT"]) == (1, 0)
