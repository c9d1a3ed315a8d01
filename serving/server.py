"""Builds, starts and drains the ``grpc.aio`` server: servicers, health, reflection.

``SERVICERS`` lists what the server offers; each entry builds a servicer from the loaded
``Runtime`` and adds it to the server, so another API is one more entry. ``ModelServer`` is
usable in-process (tests) and by ``serve`` (the CLI), which adds the signal handling.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fashion_mnist.v1 import classifier_pb2_grpc
from serving.api.admission import Admission
from serving.api.classifier import SERVICE_NAME as CLASSIFIER_SERVICE
from serving.api.classifier import ClassifierServicer
from serving.errors import RepositoryError
from serving.repository import ModelRegistry, load_repository
from serving.service import ClassifierService
from serving.settings import Settings

log = logging.getLogger(__name__)


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
    add: Callable[[Runtime, grpc.aio.Server], None]


def _add_classifier(runtime: Runtime, server: grpc.aio.Server) -> None:
    settings = runtime.settings
    service = ClassifierService(runtime.registry, settings.default_model, settings.baseline_model)
    classifier_pb2_grpc.add_ClassifierServicer_to_server(
        ClassifierServicer(service, settings.max_batch_size, settings.worker_threads), server
    )


SERVICERS: list[ServicerRegistration] = [ServicerRegistration(CLASSIFIER_SERVICE, _add_classifier)]


class ListenError(Exception):
    """The server cannot bind its address."""


class ModelServer:
    """The gRPC server over a loaded model repository."""

    def __init__(self, runtime: Runtime, servicers: list[ServicerRegistration] = SERVICERS):
        self.runtime = runtime
        self.settings = runtime.settings
        self.admission = Admission()
        self.health = health.aio.HealthServicer()
        self._service_names = [registration.service_name for registration in servicers]
        max_bytes = self.settings.max_message_bytes
        self._server = grpc.aio.server(
            interceptors=[self.admission],
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
            ],
        )
        for registration in servicers:
            registration.add(runtime, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> "ModelServer":
        """Loads and verifies the repository (RepositoryError if it cannot be served)."""
        executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="inference")
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

    async def start(self) -> None:
        """Listens, then reports SERVING for the server ("") and each service."""
        try:
            self.port = self._server.add_insecure_port(self.settings.address)
        except RuntimeError as error:
            raise ListenError(f"cannot listen on {self.settings.address}: {error}") from None
        await self._server.start()
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        models = ", ".join(f"{m.name} v{m.version}" for m in self.runtime.registry.list())
        log.info(
            "serving",
            extra={
                "fields": {
                    "address": self.address,
                    "models": models,
                    "default_model": self.settings.default_model,
                    "try": f"fmnist classify --target {self.address} --test-index 0 1 2",
                }
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drains: health NOT_SERVING, new calls UNAVAILABLE, calls in flight get ``grace``
        seconds (default: the settings') to finish, then the rest are cancelled."""
        grace = self.settings.grace_period if grace is None else grace
        self.admission.close()
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"in_flight": self.admission.in_flight,
                                               "grace_s": grace}})
        await self._server.stop(grace)
        self.runtime.executor.shutdown(wait=True, cancel_futures=True)
        log.info("stopped")

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
        if server.admission.accepting:
            await server.stop()


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, then drains and returns."""
    server = ModelServer.from_settings(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    await server.start()
    await stop_requested.wait()
    log.info("shutdown requested")
    await server.stop()
