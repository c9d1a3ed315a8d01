"""Several server processes on one port, under a supervisor that replaces any that dies.

Why: one Python process spends at most one core on gRPC and protobuf work (the GIL), however
many cores onnxruntime uses; N processes use N cores when clients bring several connections.
Every worker listens on the port (SO_REUSEPORT) and the kernel hashes each new connection to
one of them; a client's connection stays with its worker.

The supervisor stays small and fork-safe (no gRPC object, onnxruntime session or thread). It

1. points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory (``serving.scratch``)
   before any worker imports prometheus_client, so each worker keeps its metrics in files
   there (named by slot), and forks a small process serving ``/metrics`` summed over them;
2. reserves the port (port 0 becomes one free port all workers share), imports the libraries
   every worker imports (``SHARED_IMPORTS``) and forks the workers;
   each loads the repository, serves, and reports over a pipe that it serves, or the one-line
   reason it cannot (the supervisor then stops the others and fails with that line);
3. forks a replacement when a worker dies (at most one per slot per second; twice as long after
   each replacement in a row that failed to start, up to 32 s), and kills a replacement that
   does not serve within ``--worker-start-timeout``, or a worker (or the metrics process) whose
   main thread has been silent for ``HUNG_AFTER_S`` (``Heartbeats``);
4. on SIGTERM/SIGINT/SIGHUP, at any moment, even while workers start, passes SIGTERM on, waits for
   the workers to drain (the grace period, or none on a second SIGINT), then kills them and
   removes the directory. Should the supervisor itself be killed, the kernel sends each worker
   SIGTERM (PR_SET_PDEATHSIG): they drain and exit rather than linger, and the next supervisor
   removes the directory they leave (``serving.scratch``).
"""

import contextlib
import importlib
import logging
import os
import select
import signal
import time
from dataclasses import replace

from serving.entry import STOP_SIGNALS
from serving.errors import WorkerStartError
from serving.ports import listening, reserved_port
from serving.scratch import held_directory
from serving.settings import Settings
from serving.worker_process import READY, Heartbeats, read_all, signals_held, worker_main
from serving.workers_metrics import MULTIPROCESS_ENV, http_server, summed_registry

RESTART_INTERVAL_S = 1.0
MAX_RESTART_DOUBLINGS = 5  # after failed starts in a row: 2, 4, ... 32 s
STOP_MARGIN_S = 5.0  # beyond the grace period, before workers are killed
HUNG_AFTER_S = 10.0  # a serving worker (or the metrics process) silent this long is killed
METRICS = -1  # the metrics process's slot
# Imported once here rather than in each worker: two workers importing them at once on two
# cores served ~11% later (BENCHMARKS.md, "Issue 12, fifteenth session"). None opens a gRPC
# runtime when imported, and no thread of theirs runs over a fork (numpy's OpenBLAS stops its
# own). Not onnxruntime: with its telemetry on (the operator's choice) its import starts a
# thread; nor serving.metrics, whose files each worker names.
SHARED_IMPORTS = ("numpy", "serving.native.server", "grpc_health.v1.health",
                  "grpc_reflection.v1alpha.reflection")

log = logging.getLogger(__name__)


def supervise(settings: Settings) -> int:
    """Runs ``settings.workers`` server processes until a stop signal; returns the exit
    status. Raises WorkerStartError, with a worker's one-line reason, if they cannot start, and
    ListenError if a port is another program's (``reserved_port``'s check) or the metrics port
    cannot be had (taken since)."""
    with held_directory("fmnist-metrics-") as directory, reserved_port(settings) as port:
        os.environ[MULTIPROCESS_ENV] = directory  # left set: the supervisor exits after
        supervisor = _Supervisor(replace(settings, port=port), directory)
        try:
            supervisor.start()
            return supervisor.run()
        finally:
            supervisor.kill_all()


class _Supervisor:
    def __init__(self, settings: Settings, directory: str):
        self.settings = settings
        self.directory = directory
        self.workers: dict[int, int] = {}  # pid -> slot
        self.starting: dict[int, int] = {}  # start-report pipe -> pid
        self.started_at: dict[int, float] = {}  # slot (METRICS too) -> last fork time
        self.served: set[int] = set()  # pids that reported serving
        self.failed_starts: dict[int, int] = {}  # slot -> its workers in a row that never served
        self.due: dict[int, float] = {}  # slot (METRICS: metrics process) -> when to fork anew
        self.heartbeats = Heartbeats(settings.workers + 1)  # METRICS (-1): the last one
        self.stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._metrics = None  # the /metrics listening socket's server, served by _metrics_pid
        self._metrics_pid = 0

    def start(self) -> None:
        """Forks every worker and waits until each serves; SIGTERM meanwhile stops them."""
        for signal_number in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signal_number, self._on_signal)
        signal.set_wakeup_fd(self._wake_write)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held since serving.entry
        if self.settings.metrics_port:
            # /metrics over every worker's files, bound here (a port taken since check_free
            # fails the start with one line) and served by the metrics process
            host, port = self.settings.host, self.settings.metrics_port
            self._metrics = listening(" for metrics", host, port, lambda: http_server(
                host, port, summed_registry(self.directory)))
            self._fork_metrics()
        for name in (*SHARED_IMPORTS, *(["granian"] if self.settings.http_port else [])):
            importlib.import_module(name)
        for slot in range(self.settings.workers):
            if not self.stopping:
                self._fork(slot)
        deadline = time.monotonic() + self.settings.worker_start_timeout
        while self.starting and not self.stopping:
            if time.monotonic() > deadline:
                raise WorkerStartError(f"a worker did not serve within "
                                       f"{self.settings.worker_start_timeout:g} s")
            for pid, message in self._reports(max(0.0, deadline - time.monotonic())):
                if message == READY:
                    self.served.add(pid)
                elif not self.stopping:  # Ctrl-C reaches workers too; none said why: how it died
                    raise WorkerStartError(message.decode(errors="replace").strip() or (
                        f"worker {pid} died before serving: {self._reaped(pid)}"))
        if not self.stopping:  # (_reaped to say how one died; run() or _stop() reap the rest)
            log.info("workers serving", extra={"fields": {
                "workers": self.settings.workers, "pids": sorted(self.workers),
                "address": self.settings.address, "metrics_port": self.settings.metrics_port,
                "metrics_dir": self.directory}})

    def _reaped(self, pid: int) -> str:
        """How worker ``pid`` died; reaped, it leaves ``workers`` (its pid may be another's)."""
        del self.workers[pid]
        return _describe(os.waitpid(pid, 0)[1])

    def run(self) -> int:
        while not self.stopping:
            timeout = min([1.0, *(due - time.monotonic() for due in self.due.values())])
            for pid, message in self._reports(max(0.0, timeout)):
                self._replacement_started(pid, message)
            self._kill_hung_replacements()
            self._kill_silent_workers()
            self._reap()
            for slot, due in list(self.due.items()):
                if due <= time.monotonic() and not self.stopping:
                    del self.due[slot]
                    self._fork_metrics() if slot == METRICS else self._fork(slot)
        return self._stop()

    def _on_signal(self, signal_number, _frame) -> None:
        if signal_number == signal.SIGINT and self.stopping:  # Ctrl-C twice: stop waiting
            raise KeyboardInterrupt  # (supervise kills the workers, the CLI exits 130)
        if signal_number in STOP_SIGNALS and not self.stopping:
            self.stopping = True
            log.info("shutdown requested", extra={"fields": {
                "signal": signal.Signals(signal_number).name, "workers": sorted(self.workers)}})

    def _reports(self, timeout: float) -> list[tuple[int, bytes]]:
        """Waits up to ``timeout`` for a signal or start reports; returns them: (pid, message)."""
        readable, _, _ = select.select([self._wake_read, *self.starting], [], [], timeout)
        if self._wake_read in readable:
            os.read(self._wake_read, 512)
        return [(self.starting.pop(pipe), read_all(pipe))
                for pipe in set(readable) & set(self.starting)]

    def _fork(self, slot: int) -> None:
        """Starts a worker; its start report comes over a pipe of its own."""
        read_end, write_end = os.pipe()
        with signals_held() as become_child:
            pid = os.fork()
            if pid == 0:
                # what a worker closes: the wake-up pipe, others' report pipes, the metrics socket
                inherited = [read_end, self._wake_read, self._wake_write, *self.starting,
                             *([self._metrics.fileno()] if self._metrics else [])]
                worker_main(self.settings, slot, write_end, inherited, become_child,
                            heartbeats=self.heartbeats)
        os.close(write_end)
        self.workers[pid] = slot
        self.starting[read_end] = pid
        self.started_at[slot] = time.monotonic()

    def _fork_metrics(self) -> None:
        """Serves ``/metrics`` from a process of its own, on the socket bound here."""
        self.started_at[METRICS] = time.monotonic()
        self.heartbeats.beat(METRICS)  # not its predecessor's silence
        with signals_held() as become_child:
            pid = os.fork()
            if pid == 0:
                try:
                    become_child([self._wake_read, self._wake_write, *self.starting])
                    self._metrics.service_actions = lambda: self.heartbeats.beat(METRICS)
                    self._metrics.serve_forever()  # until SIGTERM; beats each 0.5 s at most
                finally:
                    os._exit(1)
        self._metrics_pid = pid

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        while self.workers or self._metrics_pid:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            if pid == self._metrics_pid:
                self._metrics_pid = 0
                if not self.stopping:
                    log.warning("metrics process died; starting another", extra={"fields": {
                        "metrics_pid": pid, "status": _describe(status)}})
                    self.due[METRICS] = self.started_at[METRICS] + RESTART_INTERVAL_S
                continue
            if (slot := self.workers.pop(pid, None)) is None:
                continue
            multiprocess.mark_process_dead(slot, self.directory)  # files are named by slot
            if self.stopping:
                continue
            failed = 0 if pid in self.served else self.failed_starts.get(slot, 0) + 1
            self.served.discard(pid)
            self.failed_starts[slot] = failed
            self.due[slot] = (self.started_at[slot]  # from the last fork: 0 s if long ago
                              + RESTART_INTERVAL_S * 2 ** min(failed, MAX_RESTART_DOUBLINGS))
            log.warning("worker died; starting another", extra={"fields": {"worker_pid": pid,
                "status": _describe(status), "slot": slot,
                "retry_in_s": round(max(0.0, self.due[slot] - time.monotonic()), 1)}})

    def _kill_hung_replacements(self) -> None:
        """A replacement that neither serves nor fails in time (a hung disk, a lock) is
        killed, so that its slot gets another try instead of staying empty for ever."""
        timeout = self.settings.worker_start_timeout
        for pipe, pid in list(self.starting.items()):
            slot = self.workers.get(pid)  # None: it died, which its pipe reports next
            if slot is not None and time.monotonic() - self.started_at[slot] > timeout:
                del self.starting[pipe]
                os.close(pipe)
                log.error("worker failed to start", extra={"fields": {
                    "worker_pid": pid, "reason": f"it did not serve within {timeout:g} s; killed"}})
                _send(pid, signal.SIGKILL)

    def _kill_silent_workers(self) -> None:
        """A worker that served, or the metrics process, silent for HUNG_AFTER_S (stopped, or a
        thread holds its GIL) is killed, to be replaced like any that dies, rather than hold
        its clients' connections (or scrapes) unanswered for good."""
        serving = {slot: pid for pid, slot in self.workers.items() if pid in self.served}
        serving.update({METRICS: self._metrics_pid} if self._metrics_pid else {})
        for slot, silent in self.heartbeats.silent_s(serving).items():
            if silent > HUNG_AFTER_S:
                kind = "metrics process" if slot == METRICS else "worker"
                log.error(f"{kind} hung; killing it", extra={"fields": {
                    f"{kind.partition(' ')[0]}_pid": serving[slot], "silent_s": round(silent, 1)}})
                self.heartbeats.beat(slot)  # killed once: it is reaped before it is due again
                _send(serving[slot], signal.SIGKILL)

    def _replacement_started(self, pid: int, message: bytes) -> None:
        if message == READY:
            self.served.add(pid)
            log.info("worker serving", extra={"fields": {"worker_pid": pid}})
        elif message:  # none: it died (killed while it loaded), which _reap says next
            log.error("worker failed to start", extra={"fields": {
                "worker_pid": pid, "reason": message.decode(errors="replace").strip()}})

    def _stop(self) -> int:
        for pid in list(self.workers):
            _send(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period + STOP_MARGIN_S
        while self.workers and time.monotonic() < deadline:
            self._reports(0.02)
            self._reap()
        if self.workers:
            log.warning("workers did not stop in time; killing them",
                        extra={"fields": {"pids": sorted(self.workers)}})
        self.kill_all()
        log.info("stopped")
        return 0

    def kill_all(self) -> None:
        signal.set_wakeup_fd(-1)
        while self.starting:
            os.close(self.starting.popitem()[0])
        for pid in [*self.workers, *([self._metrics_pid] if self._metrics_pid else [])]:
            _send(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.workers.clear()
        self._metrics_pid = 0
        if self._metrics is not None:
            self._metrics.server_close()
            self._metrics = None


def _send(pid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it died meanwhile
        os.kill(pid, signal_number)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)  # -N: killed by signal N
    if code == -signal.SIGBUS:  # a write to a page of a metrics file (mmap) on a full tmpfs
        return "killed by SIGBUS (is /dev/shm full? the metrics files are mapped from there)"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
