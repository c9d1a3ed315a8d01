"""Builds, starts and drains the server: servicers, health, reflection, and in front of them
either grpc.aio itself or the native front door (``serving.frontdoor``).

``SERVICERS`` lists what the server offers; each entry builds a servicer from the loaded
``Runtime`` and adds it to the server, so another API is one more entry. ``ModelServer`` is
usable in-process (tests) and by ``serve`` (the CLI), which adds the signal handling.
"""

import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fashion_mnist.v1 import classifier_pb2_grpc
from inference import grpc_service_pb2_grpc
from serving import metrics
from serving.api.admission import Admission, MalformedRequestInterceptor
from serving.api.classifier import SERVICE_NAME as CLASSIFIER_SERVICE
from serving.api.classifier import ClassifierServicer
from serving.api.inference import SERVICE_NAME as INFERENCE_SERVICE
from serving.api.inference import InferenceServicer
from serving.batching import InferenceExecutor
from serving.errors import RepositoryError
from serving.frontdoor import DirectCalls, FrontDoor, HandlerTable
from serving.repository import ModelRegistry, load_repository
from serving.security import BearerTokenInterceptor, ServerTls
from serving.service import ClassifierService
from serving.settings import Settings
from serving.watcher import RepositoryWatcher

log = logging.getLogger(__name__)

# On shutdown, the server stops listening once no call has been in flight or arrived for this
# long; calls arriving after that would end CANCELLED rather than be refused UNAVAILABLE.
DRAIN_QUIET_SECONDS = 0.05
HEALTH_NOTICE_SECONDS = 0.05


@dataclass(frozen=True)
class Runtime:
    """What the servicers share: settings, the loaded models and the inference executor."""

    settings: Settings
    registry: ModelRegistry
    executor: ThreadPoolExecutor


@dataclass(frozen=True)
class ServicerRegistration:
    """One gRPC service: its full name (for health and reflection) and how to add it."""

    service_name: str
    add: Callable[[Runtime, grpc.aio.Server | HandlerTable], None]


def _add_classifier(runtime: Runtime, server: grpc.aio.Server | HandlerTable) -> None:
    settings = runtime.settings
    service = ClassifierService(runtime.registry, settings.default_model, settings.baseline_model)
    classifier_pb2_grpc.add_ClassifierServicer_to_server(
        ClassifierServicer(service, settings.max_batch_size, settings.worker_threads), server
    )


def _add_inference(runtime: Runtime, server: grpc.aio.Server | HandlerTable) -> None:
    settings = runtime.settings
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(runtime.registry, settings.max_batch_size, _package_version(),
                          settings.batch_delay_us / 1e6, settings.worker_threads),
        server,
    )


def _package_version() -> str:
    try:
        return importlib.metadata.version("fashion-mnist-service")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


SERVICERS: list[ServicerRegistration] = [
    ServicerRegistration(CLASSIFIER_SERVICE, _add_classifier),
    ServicerRegistration(INFERENCE_SERVICE, _add_inference),
]


class ListenError(Exception):
    """The server cannot bind its address."""


class ModelServer:
    """The gRPC server over a loaded model repository."""

    def __init__(self, runtime: Runtime, servicers: list[ServicerRegistration] = SERVICERS):
        self.runtime = runtime
        self.settings = runtime.settings
        self.admission = Admission(self.settings.max_concurrent_calls)
        self.health = health.aio.HealthServicer()
        self._service_names = [registration.service_name for registration in servicers]
        max_bytes = self.settings.max_message_bytes
        token = self.settings.auth_token
        token = [BearerTokenInterceptor(token)] if token else []
        self._interceptors = [*token, self.admission, MalformedRequestInterceptor()]
        self._server = grpc.aio.server(
            interceptors=self._interceptors,
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
            ],
        )
        self._handlers = HandlerTable()
        for registration in servicers:
            registration.add(runtime, self._handlers)
        self._handlers.add_to(self._server)
        self._front_door = FrontDoor() if self.settings.transport == "native" else None
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port = 0
        self._watching: asyncio.Task | None = None
        self._stopping: asyncio.Future | None = None
        self._metrics_endpoint = None

    @classmethod
    def from_settings(cls, settings: Settings, inference_cores: Sequence[int] = ()
                      ) -> "ModelServer":
        """Loads and verifies the repository (RepositoryError if it cannot be served);
        ``inference_cores``: where inference threads run if this process is pinned to one."""
        executor = InferenceExecutor(
            settings.worker_threads, settings.batch_max_images, settings.batch_delay_us / 1e6,
            settings.inline_max_images, inference_cores,
        )
        try:
            registry = load_repository(
                settings.model_repository, executor, settings.intra_op_threads
            )
            return cls(Runtime(settings, registry, executor))
        except RepositoryError:
            executor.shutdown()
            raise

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self, connections: socket.socket | None = None) -> None:
        """Listens, then reports SERVING for the server ("") and each service.

        ``connections``: instead of listening, serve the connections a supervisor hands over
        this socket (``serving.workers``; the native transport only)."""
        settings = self.settings
        try:
            tls = (ServerTls.read(settings.tls_cert, settings.tls_key,
                                  settings.tls_client_ca or None) if settings.tls_cert else None)
        except OSError as error:
            raise ListenError(f"cannot read a TLS file: {error}") from None
        try:
            if self._front_door is not None:  # grpc.aio behind it, on a private socket
                self._server.add_insecure_port(self._front_door.open_backend())
            elif tls is not None:
                self.port = self._server.add_secure_port(settings.address, tls.credentials())
            else:
                self.port = self._server.add_insecure_port(settings.address)
            await self._server.start()
            if self._front_door is not None:
                calls = DirectCalls(self._handlers, self._interceptors, self._front_door.peers)
                self.port = self._front_door.start(
                    settings.address if connections is None else None, calls,
                    self._handlers.unary_methods(), settings.max_message_bytes, tls,
                ) or settings.port
                if connections is not None:
                    self._front_door.serve_handed_connections(connections)
        except (OSError, RuntimeError) as error:
            await self._stop_listening()
            raise ListenError(f"cannot listen on {settings.address}: {error}") from None
        if settings.metrics_port and metrics.multiprocess_directory() is None:
            # with several workers, the supervisor serves every worker's metrics instead
            try:
                self._metrics_endpoint = metrics.start_endpoint(
                    settings.host, settings.metrics_port
                )
            except OSError as error:
                await self._stop_listening()
                raise ListenError(
                    f"cannot listen for metrics on port {settings.metrics_port}: {error}"
                ) from None
        if settings.poll_interval > 0:
            watcher = RepositoryWatcher(
                settings.model_repository, self.runtime.registry, self.runtime.executor,
                intra_op_threads=settings.intra_op_threads,
                required=(settings.default_model, settings.baseline_model),
            )
            self._watching = asyncio.create_task(watcher.run(settings.poll_interval))
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        models = ", ".join(f"{m.name} v{m.version}" for m in self.runtime.registry.list())
        log.info(
            "serving",
            extra={
                "fields": {
                    "address": self.address,
                    "transport": self.settings.transport,
                    "models": models,
                    "default_model": self.settings.default_model,
                    "try": f"fmnist classify --target {self.address} --test-index 0 1 2",
                }
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drains: health NOT_SERVING, new calls UNAVAILABLE, calls in flight get ``grace``
        seconds (default: the settings') to finish, then the rest are cancelled. A second call
        waits for the first one's drain (and ignores its own ``grace``).

        The server keeps listening until the calls in flight are done, refusing new ones with
        UNAVAILABLE (which clients retry elsewhere): once grpc itself stops, calls it has
        received but not yet handed over would end CANCELLED instead.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain(grace))
        await asyncio.shield(self._stopping)

    async def _drain(self, grace: float | None) -> None:
        grace = self.settings.grace_period if grace is None else grace
        deadline = time.monotonic() + grace
        if self._watching is not None:
            self._watching.cancel()
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"in_flight": self.admission.in_flight,
                                               "grace_s": grace}})
        # Calls are still answered for a moment, so that health watchers (whose stream the
        # native front door relays) hear NOT_SERVING before any call is refused.
        await asyncio.sleep(HEALTH_NOTICE_SECONDS)
        self.admission.close()
        while time.monotonic() < deadline:  # until nothing is in flight or arriving
            refused = self.admission.refused
            await asyncio.sleep(DRAIN_QUIET_SECONDS)
            if not self.admission.in_flight and self.admission.refused == refused:
                break
        await self._stop_listening()  # what is left: health watches, or calls past the grace
        self.runtime.executor.shutdown(wait=True, cancel_futures=True)
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.shutdown()
            self._metrics_endpoint.server_close()
        log.info("stopped")

    async def _stop_listening(self) -> None:
        if self._front_door is not None:
            await self._front_door.stop()
        await self._server.stop(0)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


@contextlib.asynccontextmanager
async def running_server(settings: Settings):
    """An in-process server on ``settings``' address, drained on exit."""
    server = ModelServer.from_settings(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def run_event_loop(main: Coroutine, event_loop: str):
    """Runs ``main`` to completion on a new event loop of the chosen implementation."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def serve(
    settings: Settings, on_ready: Callable[[ModelServer], None] | None = None,
    inference_cores: Sequence[int] = (), connections: socket.socket | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then drains and returns; ``on_ready`` is called once
    the server is serving (a supervisor's worker reports it); ``connections``: as
    ``ModelServer.start``."""
    server = ModelServer.from_settings(settings, inference_cores)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    await server.start(connections)
    if on_ready is not None:
        on_ready(server)
    await stop_requested.wait()
    log.info("shutdown requested")
    await server.stop()
