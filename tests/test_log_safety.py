"""What clients send stays out of the logs: no image bytes at any level, and no client text
that starts a line of its own."""

import base64
import logging
import sys

import grpc
import pytest

from fashion_mnist.v1 import classifier_pb2 as pb

PATTERN = bytes.fromhex("c0ffee15bad5eed5")  # 8 bytes; an image is 98 of them


def _renderings(data: bytes) -> list[str]:
    """Ways a log line could show image bytes: hex, repr, base64, a list of numbers."""
    return [
        data.hex(),
        repr(data)[2:-1],
        base64.b64encode(data).decode(),
        ", ".join(map(str, data)),
        " ".join(map(str, data)),
    ]


async def test_logs_hold_no_image_data_even_at_debug(server, stub, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    image = PATTERN * 98
    good = pb.ClassifyRequest(images=[image, image], request_id="pattern")
    assert len((await stub.Classify(good)).results) == 2
    for bad in (
        pb.ClassifyRequest(images=[image, image + PATTERN]),  # wrong size
        pb.ClassifyRequest(images=[image], model="no-such-model"),
    ):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Classify(bad)
    logs = caplog.text + "".join(capfd.readouterr())
    assert "request failed" in logs  # the refusals were logged, at all
    for rendering in _renderings(PATTERN * 2):
        assert rendering not in logs


def test_a_clients_text_in_a_log_line_cannot_start_a_line_of_its_own():
    """An unknown JSON key or query option is quoted into the error a failed call is logged
    with: in the text format a newline in it forged a log line of the client's making."""
    from serving.logs import TextFormatter

    forged = "y\n2026-12-02 00:00:01,000 CRITICAL serving.auth[1]: forged"
    record = logging.LogRecord("serving.pipeline", logging.WARNING, __file__, 1,
                               "request failed %s", (forged,), None)
    record.fields = {"error": f"{forged}: not a key", "code": "INVALID_ARGUMENT"}
    line = TextFormatter().format(record)
    assert "\n" not in line and line.count("\\x0a") == 2
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info, record.exc_text = sys.exc_info(), None
    traceback_lines = TextFormatter().format(record).splitlines()[1:]
    assert traceback_lines[0] == "Traceback (most recent call last):"  # as it is, below
