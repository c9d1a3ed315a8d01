"""fmnist_requests_total for an HTTP request whose body is refused: over --max-message-bytes
(413), or sent in a transfer coding other than chunked (501); or whose method its path does
not serve (405) or the server does not know (501)."""

import asyncio
import http.client

import pytest

from tests.conftest import held_port, local_settings, running_server
from tests.test_metrics import scrape, value

MAX_BYTES = 4 * 1024 * 1024  # --max-message-bytes' default


def status_of(port: int, path: str, headers: dict[str, str], body: bytes = b"",
              method: str = "POST") -> int:
    """The status a request of ``body`` (as is: no framing of http.client's) with ``headers``
    gets."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path)
        for name, header in headers.items():
            connection.putheader(name, header)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize(("path", "labels"), [
    ("/v2/models/mlp/infer", {"api": "v2", "method": "ModelInfer", "model": "mlp"}),
    ("/v1/classify?model=softmax", {"api": "domain", "method": "Classify", "model": "softmax"})])
@pytest.mark.parametrize("refusal", [  # status, code, headers, body
    (413, "RESOURCE_EXHAUSTED", {"Content-Length": str(MAX_BYTES + 1)}, b""),  # refused unread
    (501, "UNIMPLEMENTED", {"Transfer-Encoding": "gzip, chunked"}, b"2\r\n{}\r\n0\r\n\r\n")],
    ids=["413", "501"])
async def test_an_http_body_refused_413_or_501_counts_under_its_urls_model(
        model_repository, path, labels, refusal):
    """A 413 and a 501 were counted under model "" (refused as the body was read, before the
    call was admitted), where a 400 or a 499 of the same URL counts under the model it names."""
    status, code, headers, body = refusal
    port = held_port()
    settings = local_settings(model_repository=model_repository, metrics_port=port,
                              poll_interval=0, http_port=held_port(), max_message_bytes=MAX_BYTES)
    async with running_server(settings) as server:
        before = await asyncio.to_thread(scrape, port)
        assert await asyncio.to_thread(status_of, server.http_port, path, headers, body) == status
        after = await asyncio.to_thread(scrape, port)
    counted = {**labels, "code": code}
    assert value(after, "fmnist_requests_total", **counted) - value(
        before, "fmnist_requests_total", **counted) == 1


@pytest.mark.parametrize(("method", "path", "status", "labels"), [
    ("PATCH", "/v2/models/mlp/infer", 405, {"api": "v2", "method": "ModelInfer", "model": "mlp"}),
    ("BREW", "/v2/models/mlp/infer", 501, {"api": "v2", "method": "ModelInfer", "model": "mlp"}),
    ("GET", "/v1/classify?model=softmax", 405,
     {"api": "domain", "method": "Classify", "model": "softmax"}),
    ("POST", "/v2/models/nope/ready", 405,
     {"api": "v2", "method": "ModelReady", "model": "other"}),
    # only /v1/classify reads a model from the query (these refuse any, or pass it over)
    ("PATCH", "/v1/models?model=mlp", 405, {"api": "domain", "method": "ListModels", "model": ""}),
    ("PATCH", "/v2/models/stats?model=mlp", 405,
     {"api": "v2", "method": "ModelStatistics", "model": ""})])
async def test_an_http_method_refused_405_or_501_counts_under_its_urls_model(
        model_repository, method, path, status, labels):
    """A method the URL does not serve (405) or no method the server knows (501) went
    uncounted, where every other refusal of the same URL counts under the model it names."""
    port = held_port()
    settings = local_settings(model_repository=model_repository, metrics_port=port,
                              poll_interval=0, http_port=held_port())
    async with running_server(settings) as server:
        before = await asyncio.to_thread(scrape, port)
        assert await asyncio.to_thread(status_of, server.http_port, path, {}, b"",
                                       method) == status
        after = await asyncio.to_thread(scrape, port)
    counted = {**labels, "code": "UNIMPLEMENTED"}
    assert value(after, "fmnist_requests_total", **counted) - value(
        before, "fmnist_requests_total", **counted) == 1


async def test_an_http_method_refused_on_health_or_no_endpoint_is_not_counted(
        model_repository):
    """Health is never counted, nor is a path no endpoint serves (no method to name)."""
    port = held_port()
    settings = local_settings(model_repository=model_repository, metrics_port=port,
                              poll_interval=0, http_port=held_port())
    async with running_server(settings) as server:
        before = await asyncio.to_thread(scrape, port)
        for method, path, status in (("POST", "/v2/health/live", 405), ("BREW", "/v3", 501),
                                     ("PATCH", "/", 405)):
            assert await asyncio.to_thread(status_of, server.http_port, path, {}, b"",
                                           method) == status
        after = await asyncio.to_thread(scrape, port)
    assert {key: count for key, count in after.items()
            if key[0] == "fmnist_requests_total" and count != before.get(key)} == {}
