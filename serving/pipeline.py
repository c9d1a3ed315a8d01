"""The one call pipeline, the same around every method of every transport.

A transport describes each call as a ``Call`` and hands ``CallPipeline`` the request and the
data plane's handler; the pipeline checks the bearer token, admits the call (draining, the
concurrency limit), counts it in the metrics and turns every failure into a ``ServingError``
whose class says the status (``serving.errors``). A transport only translates that status.

Health stays open (probes hold no token) and is never refused or counted: a draining server
says NOT_SERVING over health rather than refusing it. Reflection is not counted and not
refused for draining or --max-concurrent-calls, but, a stream holding a call thread as any
other, it is refused RESOURCE_EXHAUSTED while every stream slot (``max_streams``) is taken.
"""

import functools
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from google.protobuf.message import Message

from serving.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    ServingError,
    Unauthenticated,
    Unavailable,
    parse_request,
)
from serving.metrics import IN_FLIGHT, CallMetrics

HEALTH_PREFIX = "/grpc.health.v1."  # answered by the transport: the pipeline leaves it alone
OPEN_PREFIXES = (HEALTH_PREFIX, "/inference.GRPCInferenceService/ServerLive",  # no token, as
                 "/inference.GRPCInferenceService/ServerReady")  # over HTTP
UNCOUNTED_PREFIXES = (*OPEN_PREFIXES, "/grpc.reflection.")  # never refused, not in the metrics
DRAINING_MESSAGE = "server is shutting down; retry on another replica"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """What the pipeline and the data plane know of a call, whatever the transport."""

    method: str  # "/package.Service/Method"
    authorization: str = field(default="", repr=False)  # as sent: "Bearer TOKEN"; no repr
    peer: str = ""
    deadline: float | None = None  # a time.monotonic() instant
    is_active: Callable[[], bool] = lambda: True  # an instance's attribute: never bound
    grace_cuts: bool = True  # a stop's grace end cancels it (gRPC's); HTTP's are answered on

    def check_alive(self) -> None:
        """Raises if the answer would reach nobody: work for this call stops here."""
        if (gone := self.gone()) is not None:
            raise gone

    def gone(self) -> ServingError | None:
        """Why the answer would reach nobody (its deadline passed, or its client cancelled),
        if it would not."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return DeadlineExceeded("deadline exceeded: its client stopped waiting for the answer")
        if not self.is_active():
            return Cancelled("call cancelled (by its client, or at the end of a stop's grace)")
        return None


class Admission:
    """Counts the calls in flight; refuses them once draining, or over ``max_in_flight``."""

    def __init__(self, max_in_flight: int = 0):
        self.max_in_flight = max_in_flight
        self.accepting = True
        self.in_flight = 0
        self.refused = 0  # calls refused while draining: shutdown waits until they stop coming
        self.grace_end = float("inf")  # the drain's (time.monotonic()): gRPC calls then are cut
        self.cut = 0  # calls that ended past it: cancelled by the stop
        self._counting = threading.Lock()

    def close(self, grace_end: float = float("inf")) -> None:
        """From now on, new calls get UNAVAILABLE; calls in flight go on until ``grace_end``
        (time.monotonic()), and those that end after it were cut by the stop (``cut``)."""
        self.accepting, self.grace_end = False, grace_end

    def enter(self) -> None:
        """Counts a call in: one step under the lock, so that calls starting together on
        several threads cannot all pass a check made before any of them is counted."""
        with self._counting:
            if not self.accepting:
                self.refused += 1
                raise Unavailable(DRAINING_MESSAGE)
            if self.max_in_flight and self.in_flight >= self.max_in_flight:
                raise ResourceExhausted(
                    f"server overloaded: {self.max_in_flight} calls in flight in this process "
                    "(--max-concurrent-calls); retry with backoff or on another replica")
            self.in_flight += 1
        IN_FLIGHT.inc()

    def leave(self, grace_cuts: bool = True) -> bool:
        """Counts a call out; True if the stop cut it (``Call.grace_cuts``, past the grace)."""
        with self._counting:
            self.in_flight -= 1
            cut = grace_cuts and not self.accepting and time.monotonic() >= self.grace_end
            self.cut += cut
        IN_FLIGHT.dec()
        return cut


class CallPipeline:
    def __init__(self, token: str, admission: Admission,
                 model_label: Callable[[object], str] = lambda request: "",
                 max_streams: int = 0):
        """``token``: what every call but health's must present ("" : none);
        ``model_label``: the metrics' model label of a request; ``max_streams``: streams open
        at once (0: no limit): each holds a call thread until it ends, so idle streams
        must not take the threads that unary calls and health need."""
        self._expected = token.encode()
        self.admission, self._model_label = admission, model_label
        self._metrics_of = functools.cache(CallMetrics)  # each method's, made once
        self._max_streams = max_streams
        self._stream_slots = threading.Semaphore(max_streams) if max_streams else None
        self._quiet_until = 0.0  # failed calls are DEBUG lines until then (time.monotonic())
        self._quieted = 0  # failed calls since the last WARNING that were DEBUG lines for it

    def guards(self, method: str) -> bool:
        """Whether the pipeline does anything for ``method``: not for health, which needs no
        token, is never refused and is not counted (a transport may answer it directly)."""
        return not method.startswith(HEALTH_PREFIX)

    def unary(self, call: Call, handler: Callable, request, parse: Callable | None = None,
              receive: Callable | None = None):
        """``handler(request, call)``'s response, or a ServingError; ``parse``: turns what
        the transport received into the request, once the call is admitted (its errors are
        the client's: InvalidArgument); a message given for it (HTTP: the URL's model) labels
        the metrics of a request that fails to parse. ``receive``: the transport's read of
        the request (HTTP: its body), once the token is checked and before the call is
        admitted: a client that stalls while it sends holds no place under the limit."""
        with _Around(self, call, receive=receive) as around:
            call.check_alive()  # over while it waited for a thread: not even parsed
            around.request = request
            if parse is not None:
                around.request = request = parse_request(parse, request)
            return handler(request, call)

    def stream(self, call: Call, handler: Callable, requests: Iterable,
               parse: Callable | None = None) -> Iterator:
        """``handler(requests, call)``'s responses, then a ServingError if it fails;
        ``parse`` as ``unary``'s, for each request: one that fails to parse ends the stream,
        named by its place in it, "request N: ..." (from 0; every streaming method alike).
        The stream's metrics are labelled by the model its requests name ("" if several)."""
        with _Around(self, call, self._stream_slots) as around:
            if parse is not None:
                requests = _parsed(parse, requests, around)
            yield from handler(requests, call)

    def _presents_token(self, authorization: str) -> bool:
        """"Bearer TOKEN", the scheme in any case (RFC 7235)."""
        scheme, _, presented = authorization.partition(" ")
        return (scheme.lower() == "bearer"
                and hmac.compare_digest(presented.strip().encode(), self._expected))

    def _enter(self, call: Call, receive: Callable | None) -> bool:
        """Checks the token, lets ``receive`` read the request and admits the call; True if
        it is counted."""
        if (self._expected and not call.method.startswith(OPEN_PREFIXES)
                and not self._presents_token(call.authorization)):
            raise self._refuse(call, Unauthenticated(
                "missing or invalid bearer token (authorization: Bearer TOKEN)"))
        if call.method.startswith(UNCOUNTED_PREFIXES):
            return False
        try:
            if receive is not None:
                receive()
            self.admission.enter()
        except ServingError as error:
            raise self._refuse(call, error) from None
        return True

    def _refuse(self, call: Call, error: ServingError) -> ServingError:
        """A call turned away before it ran, logged and counted by its code (no latency:
        refusals would drown the answered calls' in the histogram)."""
        if not call.method.startswith(UNCOUNTED_PREFIXES):
            self.count_unanswered([(call.method, error.grpc_code)])
        return self._failure(call, error)

    def count_unanswered(self, calls: Iterable[tuple[str, str]], request=None) -> None:
        """Counts ``(method, code)`` calls that ended before a handler ran: refused, or dead
        waiting for a call thread (the native server's); under ``request``'s model, if given."""
        for method, code in calls:
            self._metrics_of(method).count(code, self._model_label(request))

    def _failure(self, call: Call, error: Exception) -> ServingError:
        """``error`` as the ServingError the client gets, logged once."""
        fields = {"method": call.method, "peer": call.peer}
        if isinstance(error, ServingError):
            # refused for the server's state (draining, at its limit) or without the token, or
            # ended by its client (cancelled, too late): counted, and one line each would flood
            # the log (just when it matters, or at anyone's will); other faults (a bad request,
            # TooLarge) are loud, once a second at most: any client can send them in a loop
            # (a WARNING says how many of the latter it quieted since the last)
            hushed = type(error) in (Unavailable, Unauthenticated, ResourceExhausted, Cancelled,
                                     DeadlineExceeded)
            quieted = not hushed and time.monotonic() < self._quiet_until
            if not (hushed or quieted):
                self._quiet_until = time.monotonic() + 1.0
                fields["quieted_since_last"], self._quieted = self._quieted, 0
            self._quieted += quieted
            log.log(logging.DEBUG if hushed or quieted else logging.WARNING, "request failed",
                    extra={"fields": {**fields, "code": error.grpc_code, "error": str(error)}})
            return error
        return crashed(call, error)


class _Around:
    """Every call's part: token, admission (and a stream's slot), the failure as a
    ServingError, the metrics, labelled by the request (or the URL) names, if any. Only as
    ``with _Around(...)``: making one admits the call, and only ``__exit__`` lets it go. A
    class, not a generator: it runs on every call (BENCHMARKS.md, tenth session).

    ``slots``: a stream's ``threading.Semaphore``, one of which it holds while it runs;
    ``receive``: reads the request before the call is admitted (``CallPipeline.unary``)."""

    __slots__ = ("call", "counted", "pipeline", "request", "slots", "started")

    def __init__(self, pipeline: CallPipeline, call: Call, slots=None, receive=None):
        self.counted = pipeline._enter(call, receive)
        if slots is not None and not slots.acquire(blocking=False):
            if self.counted:
                pipeline.admission.leave()
            raise pipeline._refuse(call, ResourceExhausted(
                f"server busy: {pipeline._max_streams} streams open, the most it keeps (the "
                "rest of --call-threads answer unary calls); retry later or on another "
                "replica"))
        self.pipeline, self.call, self.slots, self.request = pipeline, call, slots, None
        self.started = time.perf_counter()

    def __enter__(self) -> "_Around":
        return self

    def __exit__(self, kind, error, _traceback) -> None:
        pipeline, call, code = self.pipeline, self.call, "OK"
        try:
            if kind is None:
                if (gone := call.gone()) is not None:  # over while it ran: nobody has it
                    code = pipeline._failure(call, gone).grpc_code
            elif kind is GeneratorExit:  # a stream's transport stopped reading: client gone
                code = "CANCELLED"
            elif issubclass(kind, Exception):  # a call that is over fails its reads, and
                failure = pipeline._failure(call, call.gone() or error)  # its end is why
                code = failure.grpc_code
                raise failure from None
        finally:
            # break error -> traceback -> this frame -> error: it kept the request for the GC
            error = failure = None
            if self.slots is not None:
                self.slots.release()
            if self.counted:
                # cut by the stop's grace, whatever the race between gRPC's two ends of the
                # cancelled call made of it (grpcio's mostly a stream whose requests ended: OK)
                code = "CANCELLED" if pipeline.admission.leave(call.grace_cuts) else code
                model = (pipeline._model_label(self.request)
                         if isinstance(self.request, Message) else "")
                pipeline._metrics_of(call.method).observe(self.started, model, code)


def crashed(call: Call, error: Exception) -> Internal:
    """What the client gets of ``error``, not a ServingError (a bug, a failed model run): the
    short Internal; the log gets its traceback, once."""
    log.error("request crashed", exc_info=error,
              extra={"fields": {"method": call.method, "peer": call.peer}})
    return Internal()


def _parsed(parse: Callable, requests: Iterable, around: _Around) -> Iterator:
    """``stream``'s requests, parsed one by one as its handler reads them; ``around.request``
    is the first, which labels the stream's metrics, until one names another model: then
    none does (a stream is one call: one count, one latency)."""
    model_of = around.pipeline._model_label
    for index, request in enumerate(requests):
        try:
            parsed = parse_request(parse, request)
        except ServingError as error:
            raise type(error)(f"request {index}: {error}") from None
        if index == 0 or model_of(parsed) != model_of(around.request):
            around.request = None if index else parsed  # None: several models, labelled ""
        yield parsed
