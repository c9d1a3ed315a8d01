"""What clients send stays out of the logs: no image bytes at any level, and no client text
that starts a line of its own."""

import base64
import io
import itertools
import logging
import sys
import time

import grpc
import pytest
import requests

from fashion_mnist.v1 import classifier_pb2 as pb
from serving.logs import TextFormatter
from tests.http_helpers import http_server, http_settings

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


async def test_a_client_sending_bad_requests_in_a_loop_gets_a_warning_a_second(server, stub,
                                                                               caplog):
    """Each refused request was a WARNING line of ~230 bytes: one client (no token needed), 4
    threads on one connection, wrote 1,708 a second into a 2-worker server's log (390 KB/s).
    A process now warns of at most one a second; the others are DEBUG lines (and counted in
    fmnist_requests_total, by code, as before)."""
    caplog.set_level(logging.DEBUG, logger="serving")
    started = time.monotonic()
    for _ in range(50):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Classify(pb.ClassifyRequest(images=[b"x" * 100]))
    seconds = time.monotonic() - started
    levels = [r.levelname for r in caplog.records if r.getMessage() == "request failed"]
    assert len(levels) == 50 and levels[0] == "WARNING"
    assert levels.count("WARNING") <= 1 + seconds, (levels.count("WARNING"), seconds)


async def test_a_warning_says_how_many_failed_calls_went_to_debug_before_it(server, stub,
                                                                          caplog):
    """The one WARNING a second said nothing of the DEBUG lines before it: a reader at INFO
    could not tell one bad request a second from a thousand."""
    caplog.set_level(logging.DEBUG, logger="serving")
    for _ in range(20):  # a server of its own: the first is a WARNING, the rest mostly DEBUG
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Classify(pb.ClassifyRequest(images=[b"x" * 100]))
    time.sleep(1.1)  # the thing under test: past the last WARNING's second, the next is one
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Classify(pb.ClassifyRequest(images=[b"x" * 100]))
    failed = [r for r in caplog.records if r.getMessage() == "request failed"]
    warnings = [i for i, r in enumerate(failed) if r.levelname == "WARNING"]
    assert warnings[0] == 0 and warnings[-1] == len(failed) - 1
    for before, at in itertools.pairwise(warnings):
        assert failed[at].fields["quieted_since_last"] == at - before - 1
    # two WARNINGs in a row (a call over a second, on a busy machine) quieted none between
    assert any(failed[at].fields["quieted_since_last"] > 0 for at in warnings[1:])

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


def test_no_control_character_of_a_client_starts_a_line_of_a_text_log(model_repository):
    """A query option's name is quoted as sent into the error a failed call is logged with: C1
    controls (NEL, a line end to str.splitlines() and to some viewers; CSI, which terminals
    obey) and Unicode's line and paragraph separators went into text log lines as they were."""
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(TextFormatter())
    logging.getLogger("serving").addHandler(handler)
    forged = "x\x85\x9b31m2026-12-03 00:00:01,000 CRITICAL serving.auth[1]: forged\u2028y\u2029z"
    try:
        with http_server(http_settings(model_repository)) as (_, url):
            answer = requests.get(f"{url}/v1/models", params={forged: "1"}, timeout=10)
    finally:
        logging.getLogger("serving").removeHandler(handler)
    assert answer.status_code == 400 and forged in answer.json()["error"]  # the client's, as sent
    [line] = [line for line in captured.getvalue().split("\n") if "not an option" in line]
    assert line.splitlines() == [line]
    assert all(escaped in line for escaped in ("\\x85", "\\x9b", "\\u2028", "\\u2029"))


def test_a_calls_repr_does_not_show_its_bearer_token():
    """Every call carries the client's token; Call's repr showed it, for any log line,
    exception or error tracker that shows a call (as the settings' repr hides it)."""
    from serving.pipeline import Call

    call = Call("/fashion_mnist.v1.Classifier/Classify", "Bearer s3cret-token", "ipv4:127.0.0.1")
    assert "s3cret-token" not in repr(call) and "Classify" in repr(call)
