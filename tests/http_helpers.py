"""The HTTP transport around a running server, for the tests/test_http_*.py modules."""

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

from serving.http.body import read_body
from serving.settings import Settings
from tests.conftest import held_port, local_settings, running_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / ".work" / "artifacts"  # what a person looks at after the run (screenshots)


def http_settings(model_repository: Path, **overrides) -> Settings:
    return local_settings(**{"model_repository": model_repository, "http_port": held_port(),
                             "parallel_inferences": 2, "max_request_images": 8,
                             "poll_interval": 0, "grace_period": 2.0, **overrides})




@contextlib.contextmanager
def http_server(settings: Settings):
    """``(server, base URL)``: a real server serving HTTP on ``settings.http_port``."""
    with running_server(settings) as server:
        scheme = "https" if settings.tls_cert else "http"
        yield server, f"{scheme}://127.0.0.1:{server.http_port}"


@contextlib.contextmanager
def http_and_grpc(model_repository: Path, **overrides):
    """``(server, base URL, gRPC channel)``: both transports of one server, for comparing them
    (``http_settings`` with ``overrides``)."""
    with (http_server(http_settings(model_repository, **overrides)) as (server, url),
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        yield server, url, channel


def wait_until_reading_bodies(port: int, count: int, timeout_s: float = 10) -> None:
    """Until ``count`` threads of this process wait in ``read_body`` for the rest of a request
    body sent to ``port`` (an in-process server's): clients stalled mid-body have reached the
    app. A sleep instead let a test pass that ran before they had (on a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while (reading := _reading_bodies(port)) < count:
        assert time.monotonic() < deadline, (
            f"{reading} of {count} stalled requests reached read_body in {timeout_s} s")
        time.sleep(0.01)


def _reading_bodies(port: int) -> int:
    def reading(frame) -> bool:  # another server's, left behind by an earlier test: not ours
        while frame is not None and frame.f_code is not read_body.__code__:
            frame = frame.f_back
        return frame is not None and frame.f_locals["environ"].get("SERVER_PORT") == str(port)

    return sum(map(reading, sys._current_frames().values()))


class QuietHandler(BaseHTTPRequestHandler):
    """The handler of a test's own HTTP server (a proxy before the one under test): no line per
    request."""

    def log_message(self, *_) -> None:
        pass


@contextlib.contextmanager
def served_on_a_thread(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served by http.server on 127.0.0.1, port 0, on threads of this process: its
    base URL, ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
