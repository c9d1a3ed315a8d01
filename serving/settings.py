"""The server's settings: one typed object, built once from env vars and command-line flags.

Every field of ``Settings`` is a flag (``max_batch_size`` -> ``--max-batch-size``) and an env var
(``FMNIST_MAX_BATCH_SIZE``); a flag wins over the env var, which wins over the default. To add a
setting, add a field with a ``help`` in its metadata: the flag, the env var and the ``--help``
text follow.
"""

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serving.codecs.images import IMAGE_BYTES

ENV_PREFIX = "FMNIST_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TRANSPORTS = ("native", "grpcio")
EVENT_LOOPS = ("uvloop", "asyncio")
WORKER_AFFINITIES = ("pin", "none")
CONNECTION_SPREADS = ("round-robin", "kernel")
# What a request carries besides its pixels, per image and per request (protobuf framing).
MESSAGE_OVERHEAD_PER_IMAGE = 4
MESSAGE_OVERHEAD = 1024
DEFAULT_REPOSITORY = Path("model_repository")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (what
    ``docker run --cpus`` sets; os.cpu_count() would report every core of the host)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores or 1


# One server process per core: a Python process cannot use a second core for gRPC (the GIL),
# and measured on 2 cores two workers beat one (BENCHMARKS.md).
DEFAULT_WORKERS = available_cores()
# Batches up to a full default batch (--batch-max-images) run on the event loop thread: with a
# worker process per core a thread adds no parallelism, only hand-off CPU (measured on 2 cores,
# batch 64: 1.7 vs 2.1 ms of server CPU per call; BENCHMARKS.md). Larger requests (scoring's
# 1000 images) still go to an inference thread: the loop blocks for at most ~3 ms.
INLINE_MAX_IMAGES = 256


def _setting(default, help_text: str, metavar: str = "", choices: Sequence[str] | None = None):
    return field(default=default,
                 metadata={"help": help_text, "metavar": metavar, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with; nothing else is read at run time."""

    host: str = _setting("0.0.0.0", "address to listen on (0.0.0.0: every interface)", "HOST")
    port: int = _setting(50051, "gRPC port (0: pick a free one and log it)", "PORT")
    model_repository: Path = _setting(  # noqa: RUF009 (_setting returns a field)
        DEFAULT_REPOSITORY,
        "model repository written by fmnist-train: DIR/<model>/<version>/model.onnx+model.json",
        "DIR",
    )
    default_model: str = _setting("mlp", "model that answers requests naming none", "NAME")
    baseline_model: str = _setting(
        "baseline", "model whose answer comes alongside every answer", "NAME"
    )
    max_batch_size: int = _setting(1024, "most images accepted in one request", "N")
    max_message_bytes: int = _setting(
        4 * 1024 * 1024, "largest gRPC message accepted or sent", "BYTES"
    )
    worker_threads: int = _setting(
        os.cpu_count() or 1,
        "threads running model inference, and batches of one stream classified at once",
        "N",
    )
    intra_op_threads: int = _setting(1, "onnxruntime threads inside one inference call", "N")
    metrics_port: int = _setting(0, "Prometheus metrics port (0: no metrics endpoint)", "PORT")
    workers: int = _setting(
        DEFAULT_WORKERS,
        "server processes sharing the port under a supervisor that replaces any that dies "
        "(--connection-spread); 1: a single process", "N",
    )
    connection_spread: str = _setting(
        "round-robin", "how the workers share the clients' connections: round-robin (the "
        "supervisor accepts each and hands it to the next worker, so a client's connections "
        "spread evenly; native transport without TLS, else kernel) or kernel (every worker "
        "listens, SO_REUSEPORT, and the kernel hashes each connection to one)",
        choices=CONNECTION_SPREADS,
    )
    batch_max_images: int = _setting(
        256, "most images one onnxruntime call takes when concurrent requests are batched "
        "together (1: no batching)", "N",
    )
    inline_max_images: int = _setting(
        INLINE_MAX_IMAGES, "batches of at most this many images run on the event loop thread "
        "instead of an inference thread, saving the hand-off (0: always a thread)", "N",
    )
    transport: str = _setting(
        "native", "who speaks gRPC on the public port: native (gRPC C++ in front, unary calls "
        "handed straight to Python, the rest relayed to grpc.aio; the least CPU per call) or "
        "grpcio (grpc.aio alone)", choices=TRANSPORTS,
    )
    event_loop: str = _setting(
        "uvloop", "event loop implementation (uvloop costs less CPU per call)",
        choices=EVENT_LOOPS,
    )
    worker_affinity: str = _setting(
        "pin", "pin: when there are at least as many workers as cores this process may run on, "
        "worker N's gRPC threads run on the Nth of them only, so their caches stay warm "
        "(faster at concurrency 1 and 32, BENCHMARKS.md); none: the kernel places them",
        choices=WORKER_AFFINITIES,
    )
    batch_delay_us: int = _setting(
        0, "microseconds a batch that is not full waits for more requests (0: never waits; "
        "requests arriving while the model is busy are batched anyway)", "MICROSECONDS",
    )
    max_concurrent_calls: int = _setting(
        0, "calls served at once; more are refused with RESOURCE_EXHAUSTED instead of queueing "
        "(0: no limit)", "N",
    )
    grace_period: float = _setting(
        10.0, "seconds in-flight calls get to finish on SIGTERM/SIGINT before they are cancelled",
        "SECONDS",
    )
    poll_interval: float = _setting(
        5.0, "seconds between scans of the model repository for added or removed versions "
        "(0: load once at start-up)", "SECONDS",
    )
    tls_cert: str = _setting("", "PEM certificate chain: serve TLS only (needs --tls-key)", "FILE")
    tls_key: str = _setting("", "PEM private key of --tls-cert", "FILE")
    tls_client_ca: str = _setting(
        "", "PEM CA certificates: require mutual TLS, clients show a certificate they signed",
        "FILE",
    )
    auth_token: str = field(  # repr=False: never printed with the settings
        default="", repr=False, metadata={
            "help": "bearer token every call but health must carry (authorization: Bearer "
            "TOKEN); prefer the env var, flags show in ps", "metavar": "TOKEN", "choices": None},
    )
    log_level: str = _setting("INFO", "log level", choices=LOG_LEVELS)
    log_format: str = _setting("text", "log line format", choices=LOG_FORMATS)

    def __post_init__(self):
        for name in ("max_batch_size", "max_message_bytes", "worker_threads", "intra_op_threads",
                     "workers", "batch_max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)}: expected >= 1, got {getattr(self, name)}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{_flag(name)}: expected 0..65535, got {getattr(self, name)}")
        for name in ("grace_period", "poll_interval", "batch_delay_us", "inline_max_images",
                     "max_concurrent_calls"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_flag(name)}: expected seconds >= 0, got {getattr(self, name)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key: expected both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca: mutual TLS needs --tls-cert and --tls-key")
        full_batch = self.max_batch_size * (IMAGE_BYTES + MESSAGE_OVERHEAD_PER_IMAGE)
        if full_batch + MESSAGE_OVERHEAD > self.max_message_bytes:
            raise ValueError(
                f"--max-message-bytes: expected at least {full_batch + MESSAGE_OVERHEAD} to fit a "
                f"full batch of --max-batch-size {self.max_batch_size} images, "
                f"got {self.max_message_bytes}"
            )

    @property
    def deals_connections(self) -> bool:
        """Whether the supervisor accepts the connections and deals them out to the workers
        (a worker can serve a socket it is handed only with the native transport, in
        plaintext)."""
        return (self.workers > 1 and self.connection_spread == "round-robin"
                and self.transport == "native" and not self.tls_cert)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(setting: dataclasses.Field, text: str):
    kind = {"int": int, "float": float, "Path": Path}.get(_type_name(setting), str)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"expected {_type_name(setting)}, got {text!r}") from None
    choices = setting.metadata["choices"]
    if choices and value.upper() not in choices and value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
    return value.upper() if setting.name == "log_level" else value


def _type_name(setting: dataclasses.Field) -> str:
    return setting.type if isinstance(setting.type, str) else setting.type.__name__


def argument_parser() -> argparse.ArgumentParser:
    """The ``fmnist-serve`` flags, one per setting, each naming its env var and default."""
    parser = argparse.ArgumentParser(
        prog="fmnist-serve",
        description=(
            "Serve the Fashion-MNIST models of a model repository over gRPC "
            "(fashion_mnist.v1.Classifier, grpc.health.v1, reflection). Every flag can also be "
            f"set by an env var ({ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}PORT); flags win."
        ),
        epilog=(
            "Example: fmnist-serve --model-repository model_repository --port 50051, "
            "then: fmnist classify --test-index 0 1 2"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for setting in dataclasses.fields(Settings):
        choices = setting.metadata["choices"]
        parser.add_argument(
            _flag(setting.name),
            dest=setting.name,
            metavar=setting.metadata["metavar"] or "{" + ",".join(choices) + "}",
            default=setting.default,
            help=f"{setting.metadata['help']} [env {_env_var(setting.name)}]",
        )
    return parser


def settings_from(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None):
    """Builds the settings from flags over env vars over defaults; ValueError names the culprit.

    argparse exits by itself (status 2, one line) on an unknown flag.
    """
    environ = os.environ if environ is None else environ
    flags = vars(argument_parser().parse_args(argv))
    values = {}
    for setting in dataclasses.fields(Settings):
        raw = flags[setting.name]
        source = _flag(setting.name)
        if raw is setting.default:  # not given on the command line
            if _env_var(setting.name) not in environ:
                continue
            raw, source = environ[_env_var(setting.name)], _env_var(setting.name)
        try:
            values[setting.name] = _convert(setting, raw)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    return Settings(**values)
