"""The HTTP transport's server: cheroot (CherryPy's WSGI server) serving ``HttpApp``.

Why cheroot (figures in BENCHMARKS.md, ``bench/http_servers.py``): of the servers that can be
embedded in this process (the same data plane and pipeline as gRPC) and serve TLS with client
certificates, it is the fastest; its worker thread that reads a request runs the data plane
and writes the answer, with no executor in between. waitress has no TLS; gunicorn and granian
own the process (fork, signal handlers); werkzeug's server is for development.
"""

import logging
import ssl
import threading
from pathlib import Path

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from serving.http.app import HttpApp
from serving.http.domain import TestImages
from serving.pipeline import CallPipeline

log = logging.getLogger(__name__)


class HttpTransport:
    """Serves ``classifier`` and ``inference`` (the data plane's front ends) over HTTP through
    ``pipeline``, on ``host``:``port`` (0: a free port; ``start`` returns it)."""

    def __init__(self, settings, pipeline: CallPipeline, classifier, inference, *, host: str,
                 port: int, test_images_dir: Path | None = None):
        app = HttpApp(pipeline, classifier, inference, settings.max_message_bytes,
                      TestImages(test_images_dir))
        self._server = wsgi.Server((host, port), app, numthreads=settings.call_threads,
                                   server_name="fashion-mnist-service")
        self._server.shutdown_timeout = 0  # the grace is stop()'s
        if settings.tls_cert:
            self._server.ssl_adapter = _tls(settings.tls_cert, settings.tls_key,
                                            settings.tls_client_ca)
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listens (OSError if it cannot) and serves on a thread; returns the port."""
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="http-accept")
        self._thread.start()
        return self._server.bind_addr[1]

    def stop(self, grace_s: float) -> None:
        """Stops listening; requests in flight get ``grace_s`` seconds to be answered."""
        if self._thread is None:
            return
        self._server.shutdown_timeout = grace_s
        self._server.stop()
        self._thread.join()
        self._thread = None


def _tls(cert: str, key: str, client_ca: str) -> BuiltinSSLAdapter:
    """TLS only; with ``client_ca``, clients must show a certificate it signed."""
    adapter = BuiltinSSLAdapter(cert, key)
    if client_ca:
        adapter.context.load_verify_locations(client_ca)
        adapter.context.verify_mode = ssl.CERT_REQUIRED
    return adapter
