"""Image files sent to /v1/classify that would cost the server its memory: refused past the
pixel limit, and decoded a few at a time."""

import concurrent.futures
import io
import re
from pathlib import Path

import requests

from tests.conftest import held_port
from tests.server_process import server_process

CLASSIFY = "/v1/classify"


def _blank_png(width: int, height: int) -> bytes:
    from PIL import Image

    stream = io.BytesIO()
    Image.new("1", (width, height)).save(stream, format="PNG")  # a few KB of zlib data
    return stream.getvalue()


def test_pictures_over_the_pixel_limit_are_refused_and_the_log_stays_json(model_repository):
    """Past 89M pixels Pillow warned on stderr, a line outside the JSON log; past 179M its
    own error made the message "not an image file" instead of the limit's."""
    with server_process(model_repository, "--workers", "1", "--http-port", str(held_port()),
                        "--poll-interval", "0") as (_process, logs):
        address = logs.wait_for("serving")[0]["http"]
        for size, message in [(6000, "a 6000x6000 image is over 25,000,000 pixels"),
                              (10000, "a 10000x10000 image is over 25,000,000 pixels"),
                              (14000, "the image is over 25,000,000 pixels")]:
            answer = requests.post(address + CLASSIFY.lstrip("/"), timeout=30,
                                   data=_blank_png(size, size))
            assert (answer.status_code, answer.json()["error"]) == (
                400, f"body: {message}; scale it down first")
        assert requests.get(address + "v2/health/live", timeout=5).status_code == 200
    stray = [line["text"] for line in logs.all_lines() if line["message"] is None]
    assert not stray, "lines outside the JSON log, whole:\n" + "\n".join(stray)


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_large_pictures_sent_at_once_are_decoded_a_few_at_a_time(model_repository):
    """A 5000x5000 RGBA PNG of one colour is 110 KB and costs ~220 MB to decode: eight of them
    at once took the server to 1.8 GB (32: 5.6 GB), enough for an OOM kill."""
    from PIL import Image

    stream = io.BytesIO()
    Image.new("RGBA", (5000, 5000), (200, 30, 30, 255)).save(stream, format="PNG")
    with server_process(model_repository, "--workers", "1", "--http-port", str(held_port()),
                        "--poll-interval", "0", "--call-threads", "16",
                        prefix=("taskset", "-c", "0,1")) as (process, logs):  # 2 decoders
        address = logs.wait_for("serving")[0]["http"]
        before = _peak_rss_mb(process.pid)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: requests.post(
                address + CLASSIFY.lstrip("/"), data=stream.getvalue(), timeout=120), range(8)))
        assert [answer.status_code for answer in answers] == [200] * 8
        grown = _peak_rss_mb(process.pid) - before
        assert grown < 800, grown  # two at once: ~500 MB
