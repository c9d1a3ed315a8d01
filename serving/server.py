"""Builds, starts and drains the server: the data plane (``serving.api``), the call pipeline,
and the transports in front of them, health and reflection beside them.

``ModelServer`` is usable in-process (tests) and by ``serve`` (the CLI), which adds the signal
handling. Everything runs on threads: gRPC's call threads run the data plane, which blocks
while a batch is computed (onnxruntime releases the GIL, so batches use every core).
"""

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from common import __version__
from common.flags import given
from fashion_mnist.v1 import classifier_pb2
from inference import grpc_service_pb2
from serving import metrics
from serving.api.classifier import ClassifierAPI
from serving.api.inference import InferenceAPI
from serving.batching import BatchingPolicy
from serving.entry import STOP_SIGNALS
from serving.errors import ListenError
from serving.grpc_transport import HealthServicer, PipelineInterceptor, api_handler, grpc_server
from serving.http.transport import HttpTransport
from serving.pipeline import Admission, CallPipeline
from serving.ports import listening
from serving.repository import ModelRegistry, load_repository
from serving.security import ServerTls
from serving.settings import ACCEPTS_NO_MORE, Settings, available_cores, host_port
from serving.watcher import RepositoryWatcher

log = logging.getLogger(__name__)

# On shutdown, calls are refused UNAVAILABLE (a client's retry policy sends them to another
# replica: README, "Open Inference Protocol") until none has arrived for DRAIN_QUIET_SECONDS, at
# most REFUSING_AT_MOST_SECONDS; then gRPC's GOAWAY (calls it received but had not handed over
# would end CANCELLED): clients open their next calls on a new connection, and the calls in
# flight get the rest of the grace.
DRAIN_QUIET_SECONDS = 0.05
REFUSING_AT_MOST_SECONDS = 1.0
# Past the grace, the calls it cut get this long to end, to be counted in "stopped" and the
# metrics (one may wait out --batch-delay-us, 1 s at most, then run its batch); one still running
# is left behind. With HTTP's second and the watcher's, within a supervisor's STOP_MARGIN_S.
CALLS_END_SECONDS = 2.0
# Health says NOT_SERVING this long before calls are refused, so watchers hear it first.
HEALTH_NOTICE_SECONDS = 0.05
# Call threads at work at once per core (``_max_running``): one connection, batch 1 x 32, was
# faster than with every thread at work (BENCHMARKS.md, "Threads at work").
RUNNING_PER_CORE = 4
SERVICES = {
    classifier_pb2.DESCRIPTOR.services_by_name["Classifier"]: "classifier",
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]: "inference",
}
API_METHODS = {f"/{s.full_name}/{m.name}".encode() for s in SERVICES for m in s.methods}


class ModelServer:
    """The data plane over a loaded model repository, and its transports."""

    def __init__(self, settings: Settings, registry: ModelRegistry, tls: ServerTls | None):
        self.settings, self.registry, self._tls = settings, registry, tls
        self.classifier = ClassifierAPI(registry, settings.default_model,
                                        settings.baseline_model, settings.max_request_images)
        self._draining = threading.Event()  # set as the drain begins; the watcher stops then too
        self.inference = InferenceAPI(registry, settings.max_request_images, __version__,
                                      ready=lambda: not self._draining.is_set())
        self.admission = Admission(settings.max_concurrent_calls)
        threads = settings.call_threads  # a quarter of them (at least one) holds no stream
        self.pipeline = CallPipeline(settings.auth_token, self.admission, self._model_label,
                                     max_streams=max(1, threads - max(1, threads // 4)))
        self._server = grpc_server(
            settings.grpc_server, settings.call_threads,
            [PipelineInterceptor(self.pipeline, [s.full_name for s in SERVICES])],
            settings.max_message_bytes, reuse_port=settings.workers > 1,
            max_running=_max_running(settings), connection_age_s=settings.max_connection_age)
        self.health = HealthServicer()  # every service known, NOT_SERVING, until start()
        for name in [*(s.full_name for s in SERVICES), ""]:  # (a Watch of one unknown ends)
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.add_generic_rpc_handlers(
            [api_handler(service, getattr(self, api)) for service, api in SERVICES.items()])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        listed = [*(s.full_name for s in SERVICES), health.SERVICE_NAME, reflection.SERVICE_NAME]
        info = grpc.stream_stream_rpc_method_handler(reflection.ReflectionServicer(
            listed).ServerReflectionInfo, reflection_pb2.ServerReflectionRequest.FromString,
            reflection_pb2.ServerReflectionResponse.SerializeToString)
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(  # v1 too:
            f"grpc.reflection.{v}.ServerReflection", {"ServerReflectionInfo": info})  # the same
            for v in ("v1alpha", "v1")])  # messages; tools ask v1 first, some v1 alone
        self._health_server = None
        if settings.health_port:
            self._health_server = grpc_server(  # the interceptor only parses (no API here)
                settings.grpc_server, 2, [PipelineInterceptor(self.pipeline, [])], 4096,
                reuse_port=settings.workers > 1)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        self.http = (HttpTransport(settings, self.pipeline, self.classifier, self.inference)
                     if settings.http_port else None)
        self.port = self.http_port = self.health_port = 0
        self._watcher, self._metrics_endpoint = None, None
        self._stopping, self._stopped = threading.Lock(), False

    @classmethod
    def from_settings(cls, settings: Settings) -> "ModelServer":
        """Reads the TLS files (ListenError naming one by its flag or variable, and path), then
        loads and verifies the repository (RepositoryError): a bad file stops it in a moment."""
        files = (settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        names = map(given, ("--tls-cert", "--tls-key", "--tls-client-ca"), files)
        try:
            tls = ServerTls.read(*files, tuple(names)) if settings.tls_cert else None
        except (OSError, ValueError) as error:  # (OSError: a file gone since it was checked)
            raise ListenError(str(error)) from None
        return cls(settings, load_repository(settings.model_repository, _policy(settings),
                                             settings.intra_op_threads), tls)

    def _model_label(self, request) -> str:
        """The metrics' model label: the model asked for ("" if none applies), "other" for
        names not loaded, so clients cannot grow the label set."""
        name = (getattr(request, "model_name", "") or getattr(request, "model", "")
                or getattr(request, "name", ""))
        if not name and isinstance(request, classifier_pb2.ClassifyRequest):
            name = self.settings.default_model
        return name if not name or name in self.registry.names else "other"

    def start(self) -> None:
        """Listens, then reports SERVING for the server ("") and each service."""
        settings, tls = self.settings, self._tls
        self.port = listening("", settings.host, settings.port, lambda: (
            self._server.add_secure_port(settings.address, tls) if tls
            else self._server.add_insecure_port(settings.address)))
        if self._health_server is not None:
            health_address = host_port(settings.host, settings.health_port)
            self.health_port = listening(
                " for health (--health-port)", settings.host, settings.health_port,
                lambda: self._health_server.add_insecure_port(health_address))
        if self.http is not None:
            self.http_port = listening(" for HTTP", settings.host, settings.http_port,
                                       self.http.start)
        if settings.metrics_port and metrics.multiprocess_directory() is None:
            # with several workers, the supervisor serves every worker's metrics instead
            self._metrics_endpoint = listening(
                " for metrics", settings.host, settings.metrics_port,
                lambda: metrics.start_endpoint(settings.host, settings.metrics_port))
        self._server.start()
        if self._health_server is not None:
            self._health_server.start()
        if settings.poll_interval > 0:
            watcher = RepositoryWatcher(settings.model_repository, self.registry, _policy(settings),
                                        intra_op_threads=settings.intra_op_threads,
                                        required=(settings.default_model, settings.baseline_model))
            self._watcher = threading.Thread(  # daemon: a hung read must not hold the exit
                target=watcher.run, args=(settings.poll_interval, self._draining),
                name="repository-watcher", daemon=True)
            self._watcher.start()
        for name in [*(s.full_name for s in SERVICES), ""]:  # the whole server last
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        models = ", ".join(f"{m.name} v{m.version}" for m in self.registry.list())
        scheme = "https" if settings.tls_cert else "http"
        log.info("serving", extra={"fields": {
            "address": host_port(settings.host, self.port), "transport": self._server.transport,
            **({"http": f"{scheme}://{host_port(settings.host, self.http_port, True)}/"}
               if self.http_port else {}),
            **({"health_port": self.health_port} if self.health_port else {}),
            "models": models, "default_model": settings.default_model,
            "try": _try_command(settings, self.port)}})

    def count_dead_calls(self) -> None:
        """Counts the API calls that died waiting for a call thread since the last time (``serve``
        ten times a second, the drain once more); any other path a client sent is not counted,
        each would be a series of its own (the health port's list holds only those: bounded)."""
        self.pipeline.count_unanswered((method.decode(), code) for code, method
                                       in self._server.dead_calls() if method in API_METHODS)

    def stop(self, grace: float | None = None) -> None:
        """Drains: health NOT_SERVING, new calls UNAVAILABLE, calls in flight get ``grace``
        seconds (default: the settings'), then gRPC's are cancelled (HTTP's run to their end);
        returns once every call has ended (CALLS_END_SECONDS more at most). A second call
        waits for the first one's drain (the order and its reasons: DRAIN_QUIET_SECONDS)."""
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
            self._drain(self.settings.grace_period if grace is None else grace)

    def _drain(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        self._draining.set()  # ServerReady: false (HTTP's /v2/health/ready: 400); no more polls
        self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"in_flight": self.admission.in_flight,
                                               "grace_s": grace}})
        # NOT_SERVING sent, then the notice (1 s at most: a client that reads nothing holds it)
        wait([self.health.sends.submit(time.sleep, HEALTH_NOTICE_SECONDS)], 1.0)
        self.admission.close(grace_end=deadline)
        refusing_until, refused = min(deadline, time.monotonic() + REFUSING_AT_MOST_SECONDS), -1
        while self.admission.refused != refused and time.monotonic() < refusing_until:
            refused = self.admission.refused  # until no call arrives
            time.sleep(DRAIN_QUIET_SECONDS)
        self.health.end_watches()  # the native server's stop would wait for them
        stopped = [self._server.stop(max(0.0, deadline - time.monotonic()))]  # GOAWAY
        while self.admission.in_flight and time.monotonic() < deadline:  # gRPC's and HTTP's
            time.sleep(DRAIN_QUIET_SECONDS)
        if self.http is not None:
            self.http.stop(max(0.0, deadline - time.monotonic()))
        stopped.append(self._server.stop(0))  # what is left: calls past the grace
        if self._health_server is not None:
            stopped.append(self._health_server.stop(0))
        # every call's thread done, for "stopped" to count them (a timeout <= 0: no more wait)
        if not all(done.wait(deadline + CALLS_END_SECONDS - time.monotonic()) for done in stopped):
            log.warning("calls still running past the grace period; left behind, uncounted")
        self.health.sends.shutdown()  # every Watch over: their last ends sent
        self.count_dead_calls()  # those of the drain
        if self._watcher is not None:  # it may be stuck in a read of the repository
            self._watcher.join(max(1.0, deadline - time.monotonic()))  # 1 s: a poll ends
            if self._watcher.is_alive():
                log.warning("the repository watcher is still reading or loading the repository; "
                            "left behind", extra={"fields": {"repository": str(
                                self.settings.model_repository)}})
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.shutdown()
            self._metrics_endpoint.server_close()
        log.info("stopped", extra={"fields": {"cancelled": self.admission.cut}})  # by the grace


def _try_command(settings: Settings, port: int) -> str:
    """The client command that works against this server, its secrets left to fill in (the
    host by name if it listens everywhere: a certificate names hosts, never 0.0.0.0)."""
    return " ".join(["fmnist classify --target", host_port(settings.host, port, True),
                     "--test-index 0 1 2",
                     *(["--tls-ca CA_OF_THE_CERT"] if settings.tls_cert else []),
                     *(["--tls-cert CLIENT.crt --tls-key CLIENT.key"]
                       if settings.tls_client_ca else []),
                     *(["--token TOKEN"] if settings.auth_token else [])])


def _max_running(settings: Settings) -> int:
    """Call threads at work at once (native server): the others are woken only while one of
    those waits on the network, since each wake-up costs thread switches. A batch that waits
    for more calls (``--batch-delay-us``) and a concurrency limit (``--max-concurrent-calls``,
    which must see calls to refuse them) need more calls taken."""
    running = max(RUNNING_PER_CORE * available_cores(), settings.max_concurrent_calls + 1)
    return settings.call_threads if settings.batch_delay_us else min(settings.call_threads, running)


def _policy(settings: Settings) -> BatchingPolicy:
    return BatchingPolicy(settings.max_batch_images, settings.parallel_inferences,
                          settings.batch_delay_us / 1e6)


def serve(settings: Settings, on_ready: Callable[[ModelServer], None] = lambda server: None,
          heartbeat: Callable[..., None] = lambda ahead_s=0.0: None) -> int:
    """Serves until a stop signal (STOP_SIGNALS, or ACCEPTS_NO_MORE), then drains and returns
    the exit status (0; 1, said in a line, if the port accepted no more); a second SIGINT kills
    it at once (call from the main thread: signal handlers). ``on_ready(server)`` once serving
    (a worker reports it), ``heartbeat()`` ten times a second, ``heartbeat(ahead_s=grace)`` as
    it drains (then no more). Raises RepositoryError or ListenError if it cannot serve."""
    # A handler takes no lock: it runs between two steps of the main thread, which may hold one
    # (setting an Event waited on here deadlocked when it landed inside that wait).
    stop_requested: list[signal.Signals] = []

    def on_stop_signal(number: int, _frame) -> None:
        stop_requested.append(signal.Signals(number))
        # from now on Ctrl-C ends the process at once, as in uvicorn: by the kernel (its
        # default action), whichever thread it reaches and wherever the main thread waits
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    for signal_number in (*STOP_SIGNALS, ACCEPTS_NO_MORE):
        signal.signal(signal_number, on_stop_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held since serving.entry
    server = ModelServer.from_settings(settings)
    try:
        server.start()
    except BaseException:  # whatever stopped the start: no server thread may outlive it
        server.stop(0)
        raise
    # Woken ten times a second: the kernel may hand SIGTERM to another thread (gRPC C++'s),
    # which only marks it pending; the main thread runs the handler once it runs Python again.
    try:  # whatever raises from here on, the calls in flight get their drain
        on_ready(server)
        while not stop_requested:
            heartbeat()
            server.count_dead_calls()
            time.sleep(0.1)
        first = stop_requested[0]  # ACCEPTS_NO_MORE: the native server's signal, no operator's
        log.info("shutdown requested", extra={"fields": {"signal": first.name} if (
            first != ACCEPTS_NO_MORE) else {"cause": "the gRPC port accepts no more connections"}})
        heartbeat(ahead_s=settings.grace_period)
    finally:
        server.stop()
    if ACCEPTS_NO_MORE not in stop_requested:
        return 0
    log.critical("cannot serve", extra={"fields": {"error": (
        "the gRPC port accepts no more connections: an accept failed, most often for want of "
        "file descriptors (raise the limit: ulimit -n, LimitNOFILE=, docker run --ulimit "
        "nofile=); exit status 1, for a restart policy to start the server again")}})
    return 1
