"""The workers' metrics: the variable naming the directory of their files, and ``/metrics``
over HTTP: one process's metrics (``serving.metrics.start_endpoint``), or the supervisor's
(``serving.workers``): every worker's metrics files summed, served from a process of its own
so that no scrape ever holds up the supervisor.

prometheus_client is imported only inside: the supervisor must not load it before it has
pointed ``PROMETHEUS_MULTIPROC_DIR`` at the workers' directory.
"""

import logging
import socket
import sys
import threading

from serving.settings import listening_address

# serving.metrics imports it from here: the supervisor must not import that before setting it
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger(__name__)


def summed_registry(directory: str):
    """Every worker's metrics, summed from their files in ``directory``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    MultiProcessCollector(registry := CollectorRegistry(), path=directory)  # registers itself
    return registry


def http_server(host: str, port: int, registry):
    """``/metrics`` of ``registry``, bound, not yet serving (one process's metrics, or these):
    each scrape on a thread of its own, a client that sends slowly holds only its own, and
    only for 5 s: one that sends nothing, or trickles its request a byte within each read's
    timeout, kept its thread for good (prometheus_client's server; then this one)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

    family, host = listening_address(host, port)

    class QuietHandler(WSGIRequestHandler):
        def handle(self) -> None:  # the whole exchange within 5 s: the socket is shut then
            cut = threading.Timer(5.0, self.connection.shutdown, [socket.SHUT_RDWR])
            cut.start()
            try:
                super().handle()
            finally:
                cut.cancel()
                cut.join()  # before the socket is closed: never a shutdown of a closed one

        def log_message(self, *args) -> None:
            """Silent: one line per scrape is noise."""

    class MetricsServer(ThreadingWSGIServer):  # daemon threads: a scrape never holds the exit
        address_family = family
        # connections served at once (two threads each): idle ones made threads without a
        # bound, as fast as they came; the next waits to be taken in
        slots = threading.BoundedSemaphore(16)

        def verify_request(self, request, client_address) -> bool:  # before each one's thread
            return self.slots.acquire()  # a slot is free within 5 s, each handler's cut

        def shutdown_request(self, request) -> None:  # after each connection, however it ended
            super().shutdown_request(request)
            self.slots.release()

        def server_bind(self) -> None:  # "::": IPv4 too, whatever net.ipv6.bindv6only says
            if self.address_family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

        def handle_error(self, request, client_address) -> None:  # one line, no traceback
            log.warning("metrics request failed", extra={"fields": {
                "client": client_address[0], "error": str(sys.exc_info()[1])}})

    app = make_wsgi_app(registry)

    def metrics(environ, start_response):
        # HEAD: GET's status and headers, no body (RFC 9110 9.3.2); the app knows GET only, and
        # says so (OPTIONS, 405): HEAD is added to its Allow and its 405's words
        head, answer = environ["REQUEST_METHOD"] == "HEAD", []
        body = b"".join(app({**environ, "REQUEST_METHOD": "GET"} if head else environ,
                            lambda *status_headers: answer.extend(status_headers)))
        if answer[0][:3] == "405":
            body = body.replace(b"use OPTIONS or GET", b"use GET, HEAD or OPTIONS")
        headers = [(k, "GET, HEAD, OPTIONS" if k == "Allow" else v) for k, v in answer[1]]
        start_response(answer[0], [*headers, ("Content-Length", str(len(body)))])
        return [] if head else [body]

    return make_server(host, port, metrics, server_class=MetricsServer,
                       handler_class=QuietHandler)
