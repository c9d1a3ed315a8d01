"""Several server processes on one port, under a supervisor that replaces any that dies.

Why: a Python process answers gRPC on one core at most (the GIL), and per-call gRPC and
protobuf work, not the model, is what a request costs (BENCHMARKS.md); N processes use N
cores. Each client connection stays on one worker; how connections reach the workers is
``--connection-spread``:

- round-robin (native transport, plaintext): the supervisor listens, accepts each connection
  and hands it (SCM_RIGHTS, over a socketpair per worker) to the next worker that serves,
  which serves it from then on; the supervisor sees no call. A client's connections land
  evenly, where the kernel's hash splits them by chance and leaves one worker idle while the
  other is behind (BENCHMARKS.md);
- kernel: every worker listens on the port (SO_REUSEPORT) and the kernel hashes each new
  connection to one of them.

The supervisor stays small and fork-safe: it never creates a gRPC object, an onnxruntime
session or a thread. It

1. points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory (in /dev/shm if
   writable; never in the model repository) before any worker imports prometheus_client, so
   each worker keeps its metrics in files there, and forks a small process that serves
   ``/metrics`` summed over the workers (``--metrics-port``): a scrape that stalls cannot hold
   up the supervisor, which accepts the connections and replaces workers;
2. listens on the port (round-robin), or reserves it (kernel; port 0 becomes one free port
   all workers share);
3. forks the workers; each loads the repository and serves, and reports over a pipe that it
   is serving, or the one-line reason it cannot (the supervisor then stops the others and
   fails with that line, as a single process would). When there is a worker for every core
   (``pinned_cores``), each starts pinned to its own, so that gRPC's threads, which answer
   the unary calls, are created there and keep their caches warm; once it serves, its event
   loop and inference threads (streams, big batches) may run on any core again;
4. deals out the connections (round-robin), and forks a replacement when a worker dies (at
   most one per slot per second);
5. on SIGTERM/SIGINT stops listening, passes SIGTERM on, waits for the workers to drain,
   removes the directory.
   Should the supervisor itself be killed, the kernel sends each worker SIGTERM
   (PR_SET_PDEATHSIG): they drain and exit rather than linger (the directory then stays).
"""

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import replace

from serving.errors import RepositoryError
from serving.scratch import scratch_parent
from serving.settings import Settings, available_cores

# serving.metrics.MULTIPROCESS_ENV, which the supervisor must not import before setting it
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_INTERVAL_S = 1.0
STOP_MARGIN_S = 5.0  # beyond the grace period, before workers are killed
READY = b"\x00"
BACKLOG = 1024  # connections the kernel holds while the supervisor is busy
METRICS_CLIENT_TIMEOUT_S = 5.0
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
PR_SET_PDEATHSIG = 1  # linux/prctl.h

log = logging.getLogger(__name__)


class WorkerStartError(Exception):
    """A worker could not start; the message is its reason."""


def supervise(settings: Settings) -> int:
    """Runs ``settings.workers`` server processes until SIGTERM/SIGINT; returns the exit
    status. Raises WorkerStartError, with a worker's one-line reason, if they cannot start."""
    with _multiprocess_directory() as directory, _public_port(settings) as (port, listener):
        settings = replace(settings, port=port)
        supervisor = _Supervisor(settings, directory, listener)
        try:
            supervisor.start()
            return supervisor.run()
        finally:
            supervisor.kill_all()


@contextlib.contextmanager
def _multiprocess_directory():
    """A fresh directory for the workers' metrics (``serving.scratch``), named in the
    environment the workers inherit."""
    previous = os.environ.get(MULTIPROCESS_ENV)
    with tempfile.TemporaryDirectory(prefix="fmnist-metrics-", dir=scratch_parent()) as directory:
        os.environ[MULTIPROCESS_ENV] = directory
        try:
            yield directory
        finally:
            if previous is None:
                os.environ.pop(MULTIPROCESS_ENV, None)
            else:
                os.environ[MULTIPROCESS_ENV] = previous


@contextlib.contextmanager
def _public_port(settings: Settings):
    """(port, the supervisor's listening socket, or None when the workers listen)."""
    if not settings.deals_connections:
        with _reserved_port(settings) as port:
            yield port, None
        return
    try:
        listener = _listen(settings.host, settings.port)
    except OSError as error:
        raise WorkerStartError(f"cannot listen on {settings.address}: {error}") from None
    with listener:
        yield listener.getsockname()[1], listener


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host``: a wildcard host takes IPv6 and IPv4 on one
    socket, as gRPC does; a name, its first IPv4 address if it has one (where gRPC would
    listen on each of its addresses)."""
    if host in WILDCARD_HOSTS and socket.has_dualstack_ipv6():
        listener = socket.create_server(("::", port), family=socket.AF_INET6, backlog=BACKLOG,
                                        dualstack_ipv6=True)
    else:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        family, _, _, _, address = min(addresses, key=lambda found: found[0] != socket.AF_INET)
        listener = socket.create_server(address, family=family, backlog=BACKLOG)
    listener.setblocking(False)
    return listener


@contextlib.contextmanager
def _reserved_port(settings: Settings):
    """Port 0 -> a free port, held (bound, not listening) so it stays ours while workers
    bind it too (SO_REUSEPORT)."""
    if settings.port != 0:
        yield settings.port
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((settings.host, 0))
        yield holder.getsockname()[1]


class _Supervisor:
    def __init__(self, settings: Settings, directory: str, listener: socket.socket | None):
        self.settings = settings
        self.directory = directory
        self.listener = listener  # None: the workers listen (SO_REUSEPORT)
        self.workers: dict[int, int] = {}  # pid -> slot
        self._handoffs: dict[int, socket.socket] = {}  # pid -> our end of its connection channel
        self._serving: set[int] = set()  # pids that reported serving: they get connections
        self._dealt = 0
        self._connections_dealt = None  # a Counter by worker slot, once the metrics exist
        self.started_at: dict[int, float] = {}  # slot -> last fork time
        self.stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._metrics = None  # the /metrics listening socket's server, served by _metrics_pid
        self._metrics_pid = 0
        self._metrics_started_at = 0.0
        self._starting: dict[int, int] = {}  # start-report pipe -> pid, for replacements
        self._cores = pinned_cores(settings)  # worker slot N runs on core N (mod), or anywhere

    def start(self) -> None:
        threads = self.settings.workers * self.settings.intra_op_threads
        if threads > available_cores():
            log.warning("more onnxruntime threads than cores: calls will wait for a core",
                        extra={"fields": {"workers": self.settings.workers,
                                          "intra_op_threads": self.settings.intra_op_threads,
                                          "cores": available_cores()}})
        if self.settings.metrics_port:
            self._metrics = _metrics_server(self.settings, self.directory)
            self._fork_metrics()
        if self.listener is not None:
            from prometheus_client import Counter  # its files go to the workers' directory

            self._connections_dealt = Counter(
                "fmnist_connections", "client connections the supervisor dealt to each worker "
                "slot (--connection-spread round-robin)", ["worker"])
        for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signal_number, self._on_signal)
        signal.set_wakeup_fd(self._wake_write)
        for slot in range(self.settings.workers):  # one after the other: one error, tidy logs
            pid, pipe = self._fork(slot)
            message = self._start_report(pipe)
            if message != READY:
                raise WorkerStartError(message.decode(errors="replace").strip()
                                       or f"worker {slot} exited before serving")
            self._serving.add(pid)
        log.info("workers serving", extra={"fields": {
            "workers": self.settings.workers, "pids": sorted(self.workers),
            "pinned_to_cores": self._cores or "no",
            "connections": "round-robin" if self.listener else "kernel",
            "address": self.settings.address, "metrics_port": self.settings.metrics_port,
            "metrics_dir": self.directory}})

    def run(self) -> int:
        while not self.stopping:
            readable, _, _ = select.select(
                [self._wake_read, *self._accepting(), *self._starting], [], [], 1.0)
            if self._wake_read in readable:
                os.read(self._wake_read, 512)
            if self.listener in readable:
                self._deal_connections()
            for pipe in set(readable) & set(self._starting):
                self._replacement_started(pipe)
            self._reap_and_replace()
        return self._stop()

    def _on_signal(self, signal_number, _frame) -> None:
        if signal_number in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self.stopping = True
            log.info("shutdown requested", extra={"fields": {"workers": sorted(self.workers)}})

    def _start_report(self, pipe: int) -> bytes:
        """A starting worker's report; meanwhile the workers already serving get the
        connections, so the server answers as soon as its first worker does."""
        while True:
            readable, _, _ = select.select([pipe, *self._accepting()], [], [])
            if self.listener in readable:
                self._deal_connections()
            if pipe in readable:
                return _read_all(pipe)

    def _accepting(self) -> list[socket.socket]:
        """The listener, to watch while some worker serves (none: connections wait)."""
        return [self.listener] if self.listener is not None and self._serving else []

    def _deal_connections(self) -> None:
        """Accepts the connections waiting and hands each to the next serving worker."""
        while self._serving:
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. out of file descriptors: they wait in the backlog
                log.warning("cannot accept a connection", extra={"fields": {"error": str(error)}})
                return
            with connection:  # the worker has its own descriptor of it once handed over
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gRPC's own
                self._hand_over(connection)

    def _hand_over(self, connection: socket.socket) -> None:
        """To the next serving worker in slot order. One whose channel is full (not reading)
        is passed over this time, one that is gone from now on; if none takes it, the
        connection closes and the client reconnects."""
        serving = sorted(self._serving, key=self.workers.__getitem__)
        first = self._dealt
        self._dealt += 1
        for turn in range(len(serving)):
            pid = serving[(first + turn) % len(serving)]
            try:
                socket.send_fds(self._handoffs[pid], [b"c"], [connection.fileno()])
                self._connections_dealt.labels(str(self.workers[pid])).inc()
                return
            except BlockingIOError:
                continue
            except OSError as error:  # it died: the reaper replaces it
                self._serving.discard(pid)
                log.warning("worker not taking connections", extra={"fields": {
                    "pid": pid, "error": str(error)}})
        log.warning("no worker took a connection: closed", extra={"fields": {
            "serving": sorted(self._serving)}})

    def _fork(self, slot: int) -> tuple[int, int]:
        """Starts a worker; returns its pid and the read end of its start-report pipe."""
        read_end, write_end = os.pipe()
        supervisor = os.getpid()
        ours, theirs = (socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                        if self.listener else (None, None))
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            if self._cores:  # before any thread exists: every thread of the worker inherits it
                _pin([self._cores[slot % len(self._cores)]])
            supervisor_only = [*self._own_descriptors(),
                               *([self._metrics.fileno()] if self._metrics else []),
                               *([ours.fileno()] if ours is not None else [])]
            _worker_main(self.settings, write_end, supervisor_only, supervisor, self._cores,
                         theirs)
        os.close(write_end)
        if ours is not None:
            theirs.close()
            ours.setblocking(False)  # a worker that stops reading is passed over, not waited for
            self._handoffs[pid] = ours
        self.workers[pid] = slot
        self.started_at[slot] = time.monotonic()
        return pid, read_end

    def _own_descriptors(self) -> list[int]:
        """What a child must close: the supervisor's wake-up pipe, listener and channels."""
        return [self._wake_read, self._wake_write,
                *([self.listener.fileno()] if self.listener is not None else []),
                *(handoff.fileno() for handoff in self._handoffs.values())]

    def _fork_metrics(self) -> None:
        """Serves ``/metrics`` from a process of its own, on the socket bound here."""
        time.sleep(max(0.0, self._metrics_started_at + RESTART_INTERVAL_S - time.monotonic()))
        self._metrics_started_at = time.monotonic()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(signal_number, signal.SIG_DFL)
                _drain_when_orphaned(supervisor)  # SIGTERM, which ends it
                for descriptor in self._own_descriptors():
                    os.close(descriptor)
                self._metrics.serve_forever()
            finally:
                os._exit(1)
        self._metrics_pid = pid

    def _reap_and_replace(self) -> None:
        from prometheus_client import multiprocess

        while self.workers or self._metrics_pid:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            if pid == self._metrics_pid:
                self._metrics_pid = 0
                if not self.stopping:
                    log.warning("metrics process died; starting another", extra={"fields": {
                        "pid": pid, "status": _describe(status)}})
                    self._fork_metrics()
                continue
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            self._serving.discard(pid)
            with contextlib.suppress(KeyError):
                self._handoffs.pop(pid).close()
            multiprocess.mark_process_dead(pid, self.directory)
            if self.stopping:
                continue
            log.warning("worker died; starting another", extra={"fields": {
                "pid": pid, "status": _describe(status), "slot": slot}})
            time.sleep(max(0.0, self.started_at[slot] + RESTART_INTERVAL_S - time.monotonic()))
            replacement, pipe = self._fork(slot)
            self._starting[pipe] = replacement

    def _replacement_started(self, pipe: int) -> None:
        pid = self._starting.pop(pipe)
        message = _read_all(pipe)
        if message == READY:
            if pid in self.workers:  # not reaped meanwhile
                self._serving.add(pid)
            log.info("worker serving", extra={"fields": {"pid": pid}})
        else:
            log.error("worker failed to start", extra={"fields": {
                "pid": pid, "reason": message.decode(errors="replace").strip()}})

    def _stop(self) -> int:
        if self.listener is not None:  # new connections are refused from now on
            self.listener.close()
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period + STOP_MARGIN_S
        while self.workers and time.monotonic() < deadline:
            self._reap_and_replace()
            time.sleep(0.02)
        if self.workers:
            log.warning("workers did not stop in time; killing them",
                        extra={"fields": {"pids": sorted(self.workers)}})
        self.kill_all()
        log.info("stopped")
        return 0

    def kill_all(self) -> None:
        signal.set_wakeup_fd(-1)
        for pipe in self._starting:
            os.close(pipe)
        self._starting.clear()
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.workers.pop(pid)
        for handoff in self._handoffs.values():
            handoff.close()
        self._handoffs.clear()
        self._serving.clear()
        if self._metrics_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._metrics_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._metrics_pid, 0)
            self._metrics_pid = 0
        if self._metrics is not None:
            self._metrics.server_close()
            self._metrics = None


def pinned_cores(settings: Settings) -> list[int]:
    """The cores the workers are pinned to, one each by slot: every core this process may run
    on, when the workers are at least as many (else none: a CPU quota smaller than the
    affinity, as in a container with ``--cpus``, would pin all the workers to a few cores
    that others may be using too)."""
    if settings.worker_affinity != "pin" or not hasattr(os, "sched_setaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or settings.workers < len(cores):
        return []
    return cores


def _pin(cores: list[int]) -> None:
    """This thread, and those it starts from now on, run on ``cores`` only."""
    try:
        os.sched_setaffinity(0, cores)
    except OSError as error:  # e.g. a sandbox that forbids it: serve as placed
        log.warning("worker not pinned", extra={"fields": {"cores": cores, "error": str(error)}})


def _drain_when_orphaned(supervisor: int) -> None:
    """Asks the kernel for SIGTERM (drain and exit) if the supervisor dies, even by SIGKILL, so
    that no worker outlives it (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(settings: Settings, report_fd: int, inherited: list[int],  # noqa: PLR0917 (a fork's entry)
                 supervisor: int, inference_cores: list[int],
                 connections: socket.socket | None) -> None:
    """In the forked child: serve until SIGTERM, report the start over ``report_fd``; never
    returns. ``inference_cores``: where its inference threads run when it is pinned;
    ``connections``: where the supervisor hands it the connections to serve (None: it
    listens itself)."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signal_number, signal.SIG_DFL)
        _drain_when_orphaned(supervisor)
        for fd in inherited:
            os.close(fd)
        from serving.server import ListenError, run_event_loop, serve

        def ready(_server) -> None:
            if inference_cores:  # gRPC's threads exist now, pinned; the event loop's (streams,
                _pin(inference_cores)  # health) may run anywhere, like the inference threads
            with contextlib.suppress(OSError):  # the supervisor may be gone
                os.write(report_fd, READY)
            os.close(report_fd)

        try:
            run_event_loop(serve(settings, on_ready=ready, inference_cores=inference_cores,
                                 connections=connections), settings.event_loop)
            status = 0
        except (RepositoryError, ListenError) as error:
            os.write(report_fd, str(error).encode())
    except BaseException as error:  # a worker reports any failure, then exits
        traceback.print_exc()
        with contextlib.suppress(OSError):
            os.write(report_fd, f"worker failed: {type(error).__name__}: {error}".encode())
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _metrics_server(settings: Settings, directory: str):
    """``/metrics`` over every worker's files, bound here (a port in use fails the start with
    one line) and served by the metrics process, one scrape at a time."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    class QuietHandler(WSGIRequestHandler):
        timeout = METRICS_CLIENT_TIMEOUT_S  # a client that sends nothing is dropped

        def log_message(self, *args) -> None:  # one line per scrape is noise
            pass

    class MetricsServer(WSGIServer):
        def handle_error(self, request, client_address) -> None:  # one line, no traceback
            log.warning("metrics request failed", extra={"fields": {
                "client": client_address[0], "error": str(sys.exc_info()[1])}})

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    try:
        return make_server(settings.host, settings.metrics_port, make_wsgi_app(registry),
                           server_class=MetricsServer, handler_class=QuietHandler)
    except OSError as error:
        raise WorkerStartError(
            f"cannot listen for metrics on port {settings.metrics_port}: {error}") from None


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"

