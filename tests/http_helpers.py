"""The HTTP transport around a running server, for the tests/test_http_*.py modules."""

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

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
