"""Prometheus metrics, and the per-model inference statistics derived from them.

One set of metrics serves two readers: the Prometheus text endpoint (``--metrics-port``) and
Triton's ``ModelStatistics`` RPC (``model_statistics``), so the two cannot disagree. With
several worker processes the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a temporary
directory before any worker imports this module; prometheus_client then keeps every value in
files there, one set per worker slot (``serving.worker_process``), and both readers sum them
over the processes: the endpoint is then the supervisor's (``serving.workers_metrics``), and a
worker's ``ModelStatistics`` reads them all (``exposition_registry``).

Metric names (all prefixed ``fmnist_``):

- ``requests_total{api,method,model,code}``: calls, by status code name, those refused before
  they ran too (over HTTP also a method the path does not serve: UNIMPLEMENTED, as the call
  the path makes), and those that died waiting for a call thread (model ""); a stream is one call,
  under the model its requests name ("" if several);
- ``request_duration_seconds{api,method,model}``: the latency of those that ran (histogram);
- ``requests_in_flight``: calls being answered now (summed over live processes);
- ``batch_size{model,version}``: images per onnxruntime call (histogram; with dynamic
  batching one call answers several requests);
- ``model_info{model,version,sha256}``: 1 for each loaded model version, 0 once unloaded
  (sha256: 12 hex);
- ``model_versions_refused{model}``: the versions in the repository that it refused to load
  (a bad sha256, a graph that fails its checks), by model, 0 once none is;
- ``inference_requests_total{model,version,outcome}`` and
  ``inference_request_seconds_total{...}``: predictions asked of a model version (one per
  request and model), ``outcome`` success or fail, and the time they took;
- ``inference_queue_seconds_total{model,version}``: of that, time waiting for a batch slot;
- ``inference_compute_seconds_total{model,version}``: time in onnxruntime (per request, its
  batch's whole call);
- ``inference_last_timestamp_seconds{model,version}``: when it last answered;
- ``batch_compute_seconds{model,version,batch_size}``: onnxruntime calls (``_count``) and their
  time (``_sum``), by images per call (Triton's ``batch_stats``).
"""

import functools
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.metrics import disable_created_metrics

from serving.workers_metrics import MULTIPROCESS_ENV, http_server, summed_registry

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

API_LABELS = {"fashion_mnist.v1.Classifier": "domain", "inference.GRPCInferenceService": "v2",
              "fashion_mnist.http.Page": "page"}  # the api label of each service's calls
disable_created_metrics()  # one process's series as several workers' (whose files keep none)
REQUESTS = Counter("fmnist_requests", "calls answered (gRPC and HTTP), by API, method, model "
                   "and status code", ["api", "method", "model", "code"])
REQUEST_SECONDS = Histogram("fmnist_request_duration_seconds", "call latency in the server",
                            ["api", "method", "model"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("fmnist_requests_in_flight", "calls being answered now",
                  multiprocess_mode="livesum")
BATCH_SIZE = Histogram("fmnist_batch_size", "images per onnxruntime call",
                       ["model", "version"], buckets=BATCH_BUCKETS)
REFUSED_VERSIONS = Gauge("fmnist_model_versions_refused", "model versions in the repository "
                         "refused at load (not served)", ["model"], multiprocess_mode="livemax")
MODEL_INFO = Gauge("fmnist_model_info", "model versions: 1 loaded, 0 unloaded",
                   ["model", "version", "sha256"], multiprocess_mode="livemax")
INFERENCES = Counter("fmnist_inference_requests", "predictions asked of a model version",
                     ["model", "version", "outcome"])
INFERENCE_SECONDS = Counter("fmnist_inference_request_seconds",
                            "time predictions took, queue included",
                            ["model", "version", "outcome"])
QUEUE_SECONDS = Counter("fmnist_inference_queue_seconds",
                        "time predictions waited for a batch slot", ["model", "version"])
COMPUTE_SECONDS = Counter("fmnist_inference_compute_seconds",
                          "time predictions spent in onnxruntime", ["model", "version"])
BATCH_SECONDS = Summary("fmnist_batch_compute_seconds", "onnxruntime calls and their time, by "
                        "images per call", ["model", "version", "batch_size"])
LAST_INFERENCE = Gauge("fmnist_inference_last_timestamp_seconds",
                       "Unix time of the last prediction", ["model", "version"],
                       multiprocess_mode="max")


class ModelMetrics:
    """The metric children of one model version, bound once (label lookups cost per call)."""

    def __init__(self, name: str, version: int, sha256: str):
        labels = self._labels = (name, str(version))
        self._succeeded = INFERENCES.labels(*labels, "success")
        self._failed = INFERENCES.labels(*labels, "fail")
        self._success_seconds = INFERENCE_SECONDS.labels(*labels, "success")
        self._fail_seconds = INFERENCE_SECONDS.labels(*labels, "fail")
        self._queue_seconds = QUEUE_SECONDS.labels(*labels)
        self._compute_seconds = COMPUTE_SECONDS.labels(*labels)
        self._last = LAST_INFERENCE.labels(*labels)
        self._batch_size = BATCH_SIZE.labels(*labels)
        self._info = MODEL_INFO.labels(*labels, sha256[:12])
        self._info.set(1)

    def unloaded(self) -> None:
        """The version left the registry: its info reads 0 (a series cannot be removed from
        the multiprocess files, and 0 says what happened)."""
        self._info.set(0)

    def succeeded(self, count: int, images: int, queue_s: float, call_s: float) -> None:
        """One onnxruntime call of ``images`` images that took ``call_s``: ``count`` successful
        predictions, ``queue_s`` summed over them (each computed for the whole call); one
        write per metric per batch (each is an mmap write in multiprocess mode). The call's
        batch size is a label: as many series as sizes the version ran (Triton's batch_stats)."""
        self._batch_size.observe(images)
        BATCH_SECONDS.labels(*self._labels, str(images)).observe(call_s)
        self._succeeded.inc(count)
        self._success_seconds.inc(queue_s + count * call_s)
        self._queue_seconds.inc(queue_s)
        self._compute_seconds.inc(count * call_s)
        self._last.set(time.time())

    def failed(self, total_s: float) -> None:
        self._failed.inc()
        self._fail_seconds.inc(total_s)


class CallMetrics:
    """Counts one API method's calls by status code, with the latency of those it ran."""

    def __init__(self, method: str):
        """``method``: "/package.Service/Method", labelled by its API and its name."""
        service, _, name = method.strip("/").partition("/")
        api = API_LABELS.get(service, service)
        # each series' child, looked up once (label lookups cost per call)
        self._latency = functools.cache(lambda model: REQUEST_SECONDS.labels(api, name, model))
        self._counter = functools.cache(
            lambda model, code: REQUESTS.labels(api, name, model, code))

    def observe(self, started: float, model: str, code: str) -> None:
        """A call that began at ``started`` (perf_counter) ended now with ``code``."""
        self._latency(model).observe(time.perf_counter() - started)
        self.count(code, model)

    def count(self, code: str, model: str = "") -> None:
        """A call ended with ``code`` (alone: one refused before it ran, with no latency)."""
        self._counter(model, code).inc()


def multiprocess_directory() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


def exposition_registry() -> CollectorRegistry:
    """What the metrics are read from: this process's (a single process's endpoint and
    ``ModelStatistics``), or every worker's files in multiprocess mode (a worker's
    ``ModelStatistics``: no worker serves an endpoint)."""
    return summed_registry(directory) if (directory := multiprocess_directory()) else REGISTRY


@dataclass
class Duration:
    count: int = 0
    seconds: float = 0.0


@dataclass
class ModelStatistics:
    """Triton's per-version statistics; success, queue and compute counts are one per
    successful prediction."""

    name: str
    version: int
    success: Duration
    fail: Duration
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    inference_count: float = 0  # images
    execution_count: float = 0  # onnxruntime calls
    last_inference_s: float = 0.0
    calls: dict[int, Duration] = field(default_factory=dict)  # onnxruntime calls, by images


# the samples, summed over the worker processes, that are a ModelStatistics field as they are
SUMMED = {"fmnist_inference_queue_seconds_total": "queue_seconds",
          "fmnist_inference_compute_seconds_total": "compute_seconds",
          "fmnist_batch_size_count": "execution_count", "fmnist_batch_size_sum": "inference_count"}


def model_statistics(versions: Iterable[tuple[str, int]]) -> list[ModelStatistics]:
    """The statistics of the given (name, version) pairs, summed over the worker processes."""
    wanted = {(name, str(version)): ModelStatistics(name, version, Duration(), Duration())
              for name, version in versions}
    samples = (sample for metric in exposition_registry().collect() for sample in metric.samples)
    for name, labels, value, *_ in samples:
        stats = wanted.get((labels.get("model"), labels.get("version")))
        if stats is None:
            continue
        if name == "fmnist_inference_requests_total":
            getattr(stats, labels["outcome"]).count = int(value)  # .success or .fail
        elif name == "fmnist_inference_request_seconds_total":
            getattr(stats, labels["outcome"]).seconds = value
        elif name == "fmnist_inference_last_timestamp_seconds":
            stats.last_inference_s = max(stats.last_inference_s, value)
        elif name.startswith("fmnist_batch_compute_seconds_"):  # _count or _sum, of one size
            calls = stats.calls.setdefault(int(labels["batch_size"]), Duration())
            setattr(calls, "count" if name.endswith("_count") else "seconds", value)
        elif name in SUMMED:
            setattr(stats, SUMMED[name], value)
    return list(wanted.values())


def start_endpoint(host: str, port: int):
    """Serves ``/metrics`` on its own thread; returns the HTTP server (``shutdown`` ends it).
    OSError if the port cannot be bound."""
    server = http_server(host, port, exposition_registry())
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
