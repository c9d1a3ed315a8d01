"""The HTTP transport's server: granian's WSGI worker (Rust: hyper and tokio) serving
``HttpApp`` on threads of this process.

Why granian (figures in BENCHMARKS.md, bench/http_servers.py and bench/http_load.py): the
HTTP parsing, TLS and socket work run in Rust without the GIL, and the app is called on one of
granian's Python threads, which runs the data plane to the end (no executor, no event loop):
with the real app it answers 1.6x cheroot's requests at batch 1 x 32 and 1.3x its images at
batch 64 x 4. The pure-Python servers spend more per request than the data plane does
(cheroot, the fastest of them that embeds and does TLS, ~240 us of a ~400 us call).

granian's public entry (``Granian(...).serve()``) owns the process (worker processes, signal
handlers, import by name), so the server here is built from the pieces its own workers use
(``WSGIWorker.serve_mtr``), and a slow call's answer is handed over as granian's own WSGI
callback would stream it (``response_iter``), which tells whether its client is still there;
those are not public API, hence the exact version pin in pyproject.toml and the HTTP tests that
catch a change (tests/test_http_cancelled.py for the latter).
"""

import asyncio
import logging
import resource
import socket
import threading
from asyncio import tasks
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from granian._futures import _CBScheduler, _CBSchedulerTask
from granian._granian import SocketHolder, WorkerSignal, WSGIWorker
from granian.http import HTTP1Settings, HTTP2Settings
from granian.wsgi import _callback_wrapper

from serving.http.app import HttpApp
from serving.http.body import HAND_OVER
from serving.http.domain import TestImages
from serving.pipeline import CallPipeline
from serving.settings import CORES, listening_address

BACKLOG = 1024
# connections open at once, idle ones too (granian's "backpressure"; its default, the backlog,
# let 1,024 idle sockets of one client, no token needed, hold the port from everyone for 30 s
# each): ~3 KB each; half the file descriptors (granian raised their limit as it was imported),
# the rest for gRPC's connections, whose accept stops the process once it finds none left
MAX_CONNECTIONS = max(BACKLOG, min(16_384, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2))
TLS_MIN = "tls1.2"

log = logging.getLogger(__name__)


class HttpTransport:
    """Serves ``classifier`` and ``inference`` (the data plane's front ends) over HTTP through
    ``pipeline``, on the settings' host and ``http_port`` (never 0, which means no HTTP: the
    server builds none; ``start`` returns the port), shared with the other worker processes (as
    gRPC's) if there are several; the page's test images from ``--test-images-dir`` (default:
    $FMNIST_DATA_DIR, else Debian's folder: ``common.dataset.data_dir``)."""

    def __init__(self, settings, pipeline: CallPipeline, classifier, inference):
        # Decoding a 25-megapixel picture takes ~220 MB, which stays in the C heap of the thread
        # that did it: one decode at a time per CPU, shared out among the worker processes (8
        # at once on any of the call threads took a server from 96 MB to 1.8 GB). The CPUs are
        # --parallel-inferences where it is set lower (a manifest's limit on cgroup v1).
        self._decoder = ThreadPoolExecutor(max(1, min(CORES, settings.parallel_inferences)
                                               // settings.workers),
                                           thread_name_prefix="image-decode")
        # (its leading ~ the home's already: Settings makes it so of every DIR and FILE)
        test_images_dir = Path(settings.test_images_dir) if settings.test_images_dir else None
        if test_images_dir is not None and not test_images_dir.is_dir():
            log.warning("--test-images-dir is not a directory: the page's test images are "
                        "404", extra={"fields": {"directory": str(test_images_dir)}})
        self._app = HttpApp(pipeline, classifier, inference, settings.max_message_bytes,
                            test_images=TestImages(test_images_dir), decoder=self._decoder,
                            max_images=settings.max_request_images)
        self._host, self._port = settings.host, settings.http_port
        self._reuse_port = settings.workers > 1
        self._threads = settings.call_threads
        self._tls = (
            (True, str(Path(settings.tls_cert).resolve()), str(Path(settings.tls_key).resolve()),
             None, TLS_MIN,
             str(Path(settings.tls_client_ca).resolve()) if settings.tls_client_ca else None,
             [], bool(settings.tls_client_ca))
            if settings.tls_cert else (False, None, None, None, TLS_MIN, None, [], False))
        self._stopping = WorkerSignal()
        self._stopped = threading.Event()  # set by granian once its threads have let go
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> int:
        """Listens (OSError if it cannot) and serves on granian's threads; returns the port.
        The socket is made here, listening before granian takes it: no connection is refused
        while its threads start, and a taken port is an OSError (granian would share it)."""
        family, host = listening_address(self._host, self._port)  # 0.0.0.0: "::" if IPv6
        listening = socket.create_server(  # "::": IPv4 too, as gRPC's port
            (host, self._port), family=family, backlog=BACKLOG,
            reuse_port=self._reuse_port, dualstack_ipv6=family == socket.AF_INET6)
        # as granian's own listeners: the connections accepted from it inherit TCP_NODELAY (an
        # answer granian writes in two parts waited for the client's delayed ACK, ~40 ms)
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = listening.getsockname()[1]
        worker = WSGIWorker(
            1, (None, SocketHolder(listening.detach(), False, BACKLOG)), None,
            1, 512,  # tokio threads for the sockets; its threads for blocking work
            self._threads, 30,  # Python threads that call the app; idle seconds before exit
            MAX_CONNECTIONS, "1", HTTP1Settings(), HTTP2Settings(), None, *self._tls, (None, None))
        wsgi = _callback_wrapper(self._app, {"url_path_prefix": None}, None)

        def callback(proto, scope: dict):
            scope[HAND_OVER] = partial(_hand_over, proto)
            return wsgi(proto, scope)

        # WSGI calls never run on this loop or as this task; the worker only needs them to
        # exist. granian registers the task with asyncio, where asyncio.all_tasks() of any
        # loop in the process (asyncio.run's shutdown) would fail on it: unregistered here.
        self._loop = asyncio.new_event_loop()
        self._task = _CBSchedulerTask()
        tasks._unregister_task(self._task)
        self._scheduler = _CBScheduler(self._loop, callback, self._task,
                                       partial(tasks._enter_task, self._loop),
                                       partial(tasks._leave_task, self._loop))
        self._stopping.add_cb(self._stopped.set)
        worker.serve_mtr(self._scheduler, self._loop, self._stopping)  # returns: tokio serves
        return port

    def stop(self, grace_s: float) -> None:
        """Stops listening; requests in flight get ``grace_s`` seconds to be answered (the
        server has drained the calls through its pipeline before)."""
        if self._loop is None or self._loop.is_closed():
            return
        self._stopping.set()
        # granian stops on its own threads, and says so once its connections are closed and
        # its port free (returning earlier, a restart on the same port failed). That takes
        # milliseconds, unless a client stalls in the middle of sending a request. Its Python
        # threads may still be detaching then: serving.cli does not finalize the interpreter.
        if not self._stopped.wait(grace_s + 1):
            log.warning("an HTTP connection is still in the middle of a request; left behind")
        self._decoder.shutdown()
        self._loop.close()


class _Answer:
    """An answer's bytes as granian's ``response_iter`` reads them, which tells whether its
    client was still there: granian asks for more only once it has passed them on; with the
    client gone, hyper has dropped the request, and granian closes this at once."""

    __slots__ = ("data", "taken")

    def __init__(self, data: bytes):
        self.data, self.taken = data, None

    def __next__(self) -> bytes:
        if self.taken is None:
            self.taken = False
            return self.data
        self.taken = True
        raise StopIteration

    def close(self) -> None:
        pass


def _hand_over(proto, status: int, headers: list, data: bytes) -> bool:
    """serving.http.body.HAND_OVER: the answer to granian, and whether its client took it."""
    answer = _Answer(data)
    proto.response_iter(status, headers, answer)
    return answer.taken
