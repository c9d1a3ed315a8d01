"""fmnist_requests_total for an HTTP request whose client stops sending its body part-way."""

import asyncio
import socket

import pytest

from tests.conftest import held_port, local_settings, running_server
from tests.test_metrics import scrape, value


@pytest.mark.parametrize(("path", "labels"), [
    ("/v2/models/mlp/infer", {"api": "v2", "method": "ModelInfer", "model": "mlp"}),
    ("/v1/classify?model=softmax", {"api": "domain", "method": "Classify", "model": "softmax"})])
async def test_an_http_body_cut_short_by_its_client_is_counted_under_its_urls_model(
        model_repository, path, labels):
    """A client that sends part of its body and stops (its connection closed for writing,
    or gone) was counted under model "" (read before the call was admitted, the failed read
    was a refusal, unlabelled), not the model its URL names as a body that fails to parse; and
    as INVALID_ARGUMENT (a 400), where it is a client gone mid-request: CANCELLED, 499."""
    port = held_port()
    settings = local_settings(model_repository=model_repository, metrics_port=port,
                              poll_interval=0, http_port=held_port())
    async with running_server(settings) as server:
        before = await asyncio.to_thread(scrape, port)

        def send_half() -> bytes:
            with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          "\r\nContent-Length: 100\r\n\r\n".encode() + b'{"inputs": [')
                s.shutdown(socket.SHUT_WR)
                return s.recv(100)

        assert (await asyncio.to_thread(send_half)).startswith(b"HTTP/1.1 499")
        after = await asyncio.to_thread(scrape, port)
    labels = {**labels, "code": "CANCELLED"}
    assert value(after, "fmnist_requests_total", **labels) - value(
        before, "fmnist_requests_total", **labels) == 1

