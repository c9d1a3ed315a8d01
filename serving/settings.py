"""The server's settings: one typed object, built once from env vars and command-line flags.

Every field of ``Settings`` is a flag (``max_request_images`` -> ``--max-request-images``) and
an env var (``FMNIST_MAX_REQUEST_IMAGES``); a flag wins over the env var, which wins over the
default. To add a setting, add a field with a ``help`` in its metadata: the flag, the env var
and the ``--help`` text follow.
"""

import argparse
import contextlib
import dataclasses
import math
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGRTMIN

from common.contract import IMAGE_BYTES
from common.flags import ENV_PREFIX, ArgumentParser, add_option, bearer_token, number_in
from common.paths import home_path

GRPC_SERVERS = ("native", "grpcio")
PORTS = ("port", "http_port", "health_port", "metrics_port")  # each its own, or 0: none/any
# What a request carries besides its pixels, per image and per request (protobuf framing).
MESSAGE_OVERHEAD_PER_IMAGE = 4
MESSAGE_OVERHEAD = 1024
DEFAULT_REPOSITORY = Path("model_repository")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # v2: "QUOTA PERIOD", or "max PERIOD"
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")  # v1: cpu.cfs_quota_us (-1: none), cpu.cfs_period_us
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's limits are C ints


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota, v2 or
    v1 (what ``docker run --cpus`` and Kubernetes' CPU limit set; os.cpu_count() would report
    every core of the host)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with contextlib.suppress(OSError, ValueError):  # no quota, or none that could be read
        quota, period = (CGROUP_CPU_MAX.read_text().split() if CGROUP_CPU_MAX.exists() else
                         [(CGROUP_V1_CPU / f"cpu.cfs_{part}_us").read_text().strip()
                          for part in ("quota", "period")])
        if quota not in ("max", "-1"):
            cores = min(cores or 1, max(1, math.ceil(int(quota) / int(period))))
    return cores or 1


CORES = available_cores()
DAY_S = 24 * 3600
# What the native server sends its process once its port accepts no more (server.cc's Log): it
# drains as on SIGTERM, then exits 1, for a restart-on-failure policy to start another. Not
# SIGUSR1, which log-rotation scripts send every process of a name (`pkill -USR1`): that ended
# each worker at once. SIGUSR1 and SIGUSR2 mean nothing here and are ignored
# (serving.entry.IGNORED_SIGNALS; the stop signals are serving.entry.STOP_SIGNALS).
ACCEPTS_NO_MORE = SIGRTMIN


def _setting(default, help_text: str, metavar: str = "", choices: Sequence[str] | None = None,
             *, parse=None, secret: bool = False):
    """A field; ``parse``: its flag's ``type=``, text -> value or ArgumentTypeError saying what
    was expected (argparse and common.flags put the flag or env var in front), given for
    numbers (a range to check), the repository's Path and the host, else text, not empty, of
    ``choices`` if any, a FILE's or DIR's with a leading ~ as the home's, as
    --model-repository's (bash leaves --tls-cert=~/x alone, as an env file does; a ~NAME of
    no user is refused); a ``secret`` is never printed with the settings (repr), nor shown by
    --help. The field holds what ``parse`` makes of its value's text, whether a flag, an env
    var or ``Settings(...)`` gave it."""
    return field(default=default, repr=not secret, metadata={
        "help": help_text, "metavar": metavar, "choices": choices,
        "parse": parse or (_home_text if metavar in ("FILE", "DIR") else _text(choices or ()))})


def _home_text(text: str) -> str:
    """A FILE's or DIR's text, its leading ~ the home's (common.paths); "" stays none."""
    return str(home_path(text)) if text else ""


def _text(choices: Sequence[str]):
    written = {choice.lower(): choice for choice in choices}

    def parse(text: str) -> str:  # a choice in any case, as the choice is written
        # never "": a script's unset "$HOST" (or model) was found out once the models had
        # loaded, "cannot bind :50051" ("no '' model"); refused as a guard's is (common.flags)
        if not text or (choices and text.lower() not in written):
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}"
                                             if choices else "empty (an unset variable?)")
        return written.get(text.lower(), text)
    return parse


COUNT = number_in(int, 1)
PORT = number_in(int, 0, 65535)
WAIT_S = number_in(float, 0, DAY_S)  # inf or nan crashed the shutdown (past the clock's range)


def _off_or_at_least(minimum: float, off: str):
    """0 (``off``), or seconds from ``minimum``: --poll-interval 1e-9 scanned the repository in
    a near-busy loop, --max-connection-age 1e-9 sent every client GOAWAY each millisecond."""
    checked = number_in(float, minimum, DAY_S,
                        expected=f"0 ({off}) or a number >= {minimum:g} and <= {DAY_S}")

    def parse(text: str) -> float:
        with contextlib.suppress(ValueError):
            if float(text) == 0:
                return 0.0
        return checked(text)
    return parse


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with. ``settings_from`` sets each field from its flag,
    else its env var, FMNIST_ and the field's name in capitals (``max_request_images``:
    $FMNIST_MAX_REQUEST_IMAGES), else its default: one mechanism, ``common.flags.add_option``;
    ``Settings(...)`` made in code reads no env var. Of the environment, only these are read
    besides: $FMNIST_DATA_DIR (the web page's test images when --test-images-dir is not given),
    $GRPC_VERBOSITY (gRPC's own log) and $PROMETHEUS_MULTIPROC_DIR (set by the supervisor
    for its workers)."""

    # IPv6 as URLs write it, [::1], is the address ::1 (gRPC could not bind "[[::1]]:50051"),
    # from the flag, FMNIST_HOST or Settings(...) alike
    host: str = _setting("0.0.0.0", "address to listen on (0.0.0.0: every interface)", "HOST",
                         parse=lambda text: _text(())(text[1:-1] if text[:1] + text[-1:] == "[]"
                                                      else text))
    port: int = _setting(50051, "gRPC port (0: pick a free one and log it)", "PORT", parse=PORT)
    model_repository: Path = _setting(  # noqa: RUF009 (_setting returns a field)
        DEFAULT_REPOSITORY,
        "model repository written by fmnist-train: DIR/<model>/<version>/model.onnx+model.json",
        "DIR", parse=home_path)  # --model-repository=~/x: the home's
    default_model: str = _setting("mlp", "model that answers requests naming none", "NAME")
    baseline_model: str = _setting("baseline", "model whose answer comes alongside every answer",
                                   "NAME")
    http_port: int = _setting(
        8080, "HTTP port: Open Inference Protocol REST, /v1 and the web page (0: no HTTP)", "PORT",
        parse=PORT)
    health_port: int = _setting(
        0, "plaintext port serving only grpc.health.v1, for probes that can present neither "
        "a client certificate nor the token (0: none)", "PORT", parse=PORT)
    test_images_dir: str = _setting(
        "", "directory of the Fashion-MNIST test set's IDX files (t10k-*-ubyte[.gz]) behind "
        "the web page's random test image (default: $FMNIST_DATA_DIR, else "
        "/usr/share/datasets/fashion-mnist; without them it answers 404)", "DIR")
    max_request_images: int = _setting(1024, "most images one request may carry", "N", parse=COUNT)
    max_message_bytes: int = _setting(4 * 1024 * 1024, "largest gRPC message, received or "
                                      "sent, or HTTP request body",
                                      "BYTES", parse=number_in(int, 1, MAX_MESSAGE_BYTES))
    max_batch_images: int = _setting(
        256, "most images one onnxruntime call takes when concurrent requests are batched "
        "together (1: no batching)", "N", parse=COUNT)
    batch_delay_us: int = _setting(
        0, "microseconds a batch that is not full waits for more requests (0: never waits; "
        "requests arriving while the model is busy are batched anyway)", "MICROSECONDS",
        parse=number_in(int, 0, 1_000_000))
    parallel_inferences: int = _setting(
        CORES, "onnxruntime calls one model version runs at once in a process; requests "
        "arriving meanwhile wait and are batched (default: the CPUs this process may use)",
        "N", parse=COUNT)
    intra_op_threads: int = _setting(1, "onnxruntime threads inside one inference call", "N",
                                     parse=COUNT)
    call_threads: int = _setting(
        64, "threads answering calls in a process, for gRPC and again for HTTP: a unary call "
        "holds one while it runs, a stream until it ends (at least 2: a stream never "
        "holds them all)", "N", parse=number_in(int, 2))
    grpc_server: str = _setting(
        "native", "gRPC server implementation: native (gRPC C++, serving/native; grpcio where "
        "it is not built) or grpcio (grpcio's own)", choices=GRPC_SERVERS)
    workers: int = _setting(
        CORES, "server processes sharing the port (the kernel spreads the connections), under "
        "a supervisor that replaces any that dies; 1: a single process "
        "(default: the CPUs this process may use)", "N", parse=COUNT)
    worker_start_timeout: float = _setting(
        120.0, "seconds a worker process has to load the repository and serve; one that has "
        "not by then fails the start, or is killed and replaced if it replaced another",
        "SECONDS", parse=number_in(float, 0, DAY_S, low_open=True))
    metrics_port: int = _setting(0, "Prometheus metrics port (0: no metrics endpoint)", "PORT",
                                 parse=PORT)
    max_concurrent_calls: int = _setting(
        0, "calls served at once by a process (by each of --workers); more are refused with "
        "RESOURCE_EXHAUSTED when a call thread takes them (0: no limit)", "N",
        parse=number_in(int, 0))
    max_connection_age: float = _setting(
        0.0, "seconds a client's gRPC connection lives; then GOAWAY asks the client for a new "
        "one, which a load balancer may send to a replica added since (0: forever; else at "
        "least 0.1)", "SECONDS", parse=_off_or_at_least(0.1, "forever"))
    grace_period: float = _setting(10.0, "seconds calls in flight get on SIGTERM/SIGINT/SIGHUP; "
                                   "then gRPC's are cancelled", "SECONDS", parse=WAIT_S)
    poll_interval: float = _setting(
        5.0, "seconds between scans of the model repository for added or removed versions "
        "(0: load once at start-up; else at least 0.1)", "SECONDS",
        parse=_off_or_at_least(0.1, "no polling"))
    tls_cert: str = _setting("", "PEM certificate chain: serve TLS only (needs --tls-key)", "FILE")
    tls_key: str = _setting("", "PEM private key of --tls-cert", "FILE")
    tls_client_ca: str = _setting("", "PEM CA certificates: require mutual TLS, clients show a "
                                  "certificate they signed", "FILE")
    auth_token: str = _setting(
        "", "bearer token every call but health must carry (authorization: Bearer TOKEN); "
        "prefer the env var, flags show in ps", "TOKEN", parse=bearer_token, secret=True)
    log_level: str = _setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _setting("text", "log line format", choices=("text", "json"))

    def __post_init__(self):
        for setting in dataclasses.fields(self):  # what the flags check, and make of their
            try:  # text (a path's ~, a choice as written), for Settings(...) too
                value = setting.metadata["parse"](str(getattr(self, setting.name)))
            except argparse.ArgumentTypeError as error:
                raise ValueError(f"{_flag(setting.name)}: {error}") from None
            object.__setattr__(self, setting.name, value)  # frozen
        ports = [(getattr(self, name), _flag(name)) for name in PORTS if getattr(self, name)]
        if len({port for port, _ in ports}) < len(ports):
            raise ValueError(f"{', '.join(f'{flag} {port}' for port, flag in ports)}: "
                             "expected different ports")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key: expected both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca: mutual TLS needs --tls-cert and --tls-key")
        full_batch = self.max_request_images * (IMAGE_BYTES + MESSAGE_OVERHEAD_PER_IMAGE)
        if full_batch + MESSAGE_OVERHEAD > self.max_message_bytes:
            raise ValueError(
                f"--max-message-bytes: expected at least {full_batch + MESSAGE_OVERHEAD} to fit a "
                f"full request of --max-request-images {self.max_request_images} images, "
                f"got {self.max_message_bytes}")

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)


def host_port(host: str, port: int, by_name: bool = False) -> str:
    """``HOST:PORT``, an IPv6 host in brackets; ``by_name``: a host listening everywhere as a
    client names it, localhost (a certificate names hosts, never 0.0.0.0; no browser opens [::])."""
    host = "localhost" if by_name and host in ("0.0.0.0", "::") else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listening_address(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The family and host a socket of ours (HTTP, metrics) listens on for ``host``, as gRPC's
    port does: 0.0.0.0 is "::", IPv4 too (dual-stack), where there is IPv6 (an IPv6 pod's
    address); a name of both families is IPv4 (AF_INET < AF_INET6)."""
    host = "::" if host == "0.0.0.0" and socket.has_dualstack_ipv6() else host
    return min(info[0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)), host


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def argument_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``fmnist-serve`` flags, one per setting, each naming its env var and default.

    A bad env var is a ValueError naming it (common.flags); ``exit_on_error=False`` makes a bad
    flag value an ArgumentError, which ``settings_from`` turns into one.
    """
    parser = ArgumentParser(
        prog="fmnist-serve",
        description=(
            "Serve the Fashion-MNIST models of a model repository over gRPC "
            "(fashion_mnist.v1.Classifier, the Open Inference Protocol, grpc.health.v1, "
            "reflection) and HTTP (the same APIs and a web page). Every flag can also be "
            f"set by an env var ({ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}PORT); flags win. One set "
            "but empty counts as unset, but the token's and TLS's are refused, as their flags "
            "given empty are: an unset $VAR, not a wish to serve plaintext or unchecked."
        ),
        epilog=(
            "Example: fmnist-serve --model-repository model_repository --host 127.0.0.1 "
            "(this machine only), then: fmnist classify --test-index 0 1 2"
        ),
        exit_on_error=False,
    )
    for setting in dataclasses.fields(Settings):
        metavar = setting.metadata["metavar"] or "{" + ",".join(setting.metadata["choices"]) + "}"
        add_option(parser, _flag(setting.name), dest=setting.name, type=setting.metadata["parse"],
                   metavar=metavar, default=setting.default, help=setting.metadata["help"],
                   secret=not setting.repr, environ=environ)
    return parser


def settings_from(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None):
    """Builds the settings from flags over env vars over defaults; ValueError names the culprit.

    argparse exits by itself (status 2) on an unknown flag, named without its value.
    """
    try:
        args = argument_parser(environ).parse_args(argv)
    except argparse.ArgumentError as error:
        raise ValueError(f"{error.argument_name}: {error.message}") from None
    return Settings(**vars(args))
