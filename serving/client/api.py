"""A small synchronous Python client for fashion_mnist.v1.Classifier.

    from serving.client import ClassifierClient
    with ClassifierClient("127.0.0.1:50051") as client:
        answer = client.classify(images)            # uint8 [N,28,28]
        answer.model.labels, answer.model.probabilities, answer.baseline.class_names

Errors are ``ClassifierError`` (a ``grpc.RpcError``: ``code()``, ``details()``; its str one line,
``NOT_FOUND: model: no model 'x'; ...``) for what the server or gRPC refused, DEADLINE_EXCEEDED
for a timeout that passed; ValueError for what cannot be sent (a target without its port,
images of another shape, any call once closed), TypeError for an argument of another type.
"""

import argparse
import collections
import itertools
import json
import queue
import threading
import time
from collections.abc import Iterable, Iterator

import grpc
import numpy as np

from common.flags import positive_seconds
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from serving.client import DEFAULT_TARGET, LB_POLICIES
from serving.client.answers import (
    Classification,
    ModelAnswer,
    as_images,
    decode_response,
    encode_request,
    integer,
    joined,
    text,
    version_number,
)
from serving.client.arguments import grpc_target
from serving.client.errors import ClassifierError, NoAnswer, failures
from serving.client.security import ChannelSecurity
from serving.client.watch import AnswerWatch

__all__ = ["CLIENT_TIMEOUT", "Classification", "ClassifierClient", "ClassifierError", "ModelAnswer",
           "NoAnswer"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A draining server refuses new calls UNAVAILABLE for up to a second before it says GOAWAY,
# and gRPC cancels a call that reaches it just as it stops (README, "SIGTERM under load"):
# such a call is tried twice more after a short back-off, on another replica if the channel
# reaches several (round_robin). gRPC retries only calls with no answer yet, and classifying
# is idempotent: a call computed before its connection broke is only computed again. A server
# that cannot be reached is reported after the retries too (~0.15 s later, 0.3 s at most).
RETRY_REFUSED_CALLS = json.dumps({"methodConfig": [{
    "name": [{"service": pb.DESCRIPTOR.services_by_name["Classifier"].full_name}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}]})


class _ClientTimeout:
    """Each call's ``timeout`` when none is given: the client's (None there is no limit)."""

    def __repr__(self) -> str:  # as help() shows the methods
        return "CLIENT_TIMEOUT"


CLIENT_TIMEOUT = _ClientTimeout()


def checked_timeout(timeout: float | None) -> float | None:
    """``timeout`` in seconds as fmnist's --timeout takes it, or None; ValueError else: inf or
    1e10 s (gRPC's deadline overflows) failed every call at once, and "5" (an env var's) each
    call in gRPC."""
    try:
        return None if timeout is None else positive_seconds(timeout)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"timeout: {error} (None: no limit)") from None


class _Closed:
    """A closed client's channel and stub: any use is a ValueError naming the client, where
    gRPC's named none ("Cannot invoke RPC on closed channel!"), and a stub made on a closed
    channel (``max_request_images``'s) crashed the process, a segmentation fault in gRPC."""

    def __init__(self, target: str):
        self.target = target

    def __getattr__(self, name: str):
        raise ValueError(f"this ClassifierClient ({self.target}) is closed: make a new one, or "
                         "call it within its `with` block")


class ClassifierClient:
    """Calls one server over one channel. ``timeout`` (seconds) bounds the wait for each
    answer, as fmnist's --timeout: a call's, or each of a stream's; every method takes a
    ``timeout=`` of its own in place of it (None: no limit). One client may serve every
    thread of a process (gRPC's channel is thread-safe): make one, reuse it."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = 30.0,
                 security: ChannelSecurity | None = None, lb_policy: str = "pick_first"):
        """``security``: TLS, mutual TLS and the bearer token (default: plaintext, no token).
        ``lb_policy``: how calls spread over the addresses ``target`` resolves to (gRPC's
        ``pick_first``: all to one; ``round_robin``: each call to the next, e.g. the pods of a
        Kubernetes headless Service, ``dns:///NAME.NAMESPACE.svc.cluster.local:50051``).
        A ``target``, ``timeout`` or ``lb_policy`` that fmnist's flags refuse is a ValueError
        in their words, lb_policy's in its own (a HOST with no PORT went to 443 without a word);
        a ``target`` not a str, a TypeError (50051 failed inside the check, an AttributeError)."""
        if not isinstance(target, str):
            raise TypeError(f"target: expected a str such as {DEFAULT_TARGET!r}, "
                            f"got {type(target).__name__}")
        self.target = grpc_target(target)
        if lb_policy not in LB_POLICIES:  # gRPC's C++ logged it, and used pick_first instead
            raise ValueError(f"lb_policy: expected {' or '.join(LB_POLICIES)}, got {lb_policy!r}")
        self.timeout = checked_timeout(timeout)
        self._channel = (security or ChannelSecurity()).channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.lb_policy_name", lb_policy),
                ("grpc.service_config", RETRY_REFUSED_CALLS),
                ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),  # any request retried
            ],
        )
        self._stub = pb_grpc.ClassifierStub(self._channel)
        self._most_images: int | None = None  # the server's, once asked
        self._hung = False  # a stream's answer did not come: see close

    def classify(
        self, images: np.ndarray, model: str = "", version: int = 0, request_id: str = "",
        batch_size: int | None = None, *, timeout: float | None = CLIENT_TIMEOUT,
    ) -> Classification:
        """Classifies ``uint8 [N,28,28]`` with ``model`` ("" = the server's default) at
        ``version`` (0 = newest). More images than one call may carry (the server's
        --max-request-images, or ``batch_size``) go in several calls, each after the first
        to the version that answered it, their answers joined in order (the whole test set
        was refused, INVALID_ARGUMENT); ``timeout`` bounds each call."""
        timeout = self._seconds(timeout)
        answers: list[Classification] = []
        for part in self._parts(images, batch_size, timeout):
            request = encode_request(part, model, version, request_id)
            with failures():
                answers.append(decode_response(self._stub.Classify(request, timeout=timeout)))
            model, version = answers[0].model.name, answers[0].model.version
        return joined(answers)

    def classify_batches(
        self, batches: Iterable[np.ndarray], model: str = "", version: int = 0,
        *, batch_size: int | None = None, timeout: float | None = CLIENT_TIMEOUT,
    ) -> Iterator[Classification]:
        """Classifies each batch over one ClassifyStream call, yielding the answers in order.
        A batch is sent as ``classify`` sends its images, in parts one call may carry, each
        after the first to the version that answered it (sent at once, a version published
        between two failed the batch; a baseline's still does, ValueError: it cannot be asked
        for), and answered as one. ``timeout`` bounds the wait for each answer, not
        the whole stream (a hung server's stream was waited for as long as the whole). A
        batch that cannot be sent raises its own error (ValueError for a wrong shape), as
        ``batches`` does its own."""
        timeout = self._seconds(timeout)
        failed: list[Exception] = []  # a batch that gRPC's thread could not send
        parts: collections.deque[int] = collections.deque()  # of each batch sent, in order
        sent: list[float] = []  # when each request went, for the watch
        firsts: queue.SimpleQueue = queue.SimpleQueue()  # the model a split batch's first got

        def requests() -> Iterator[pb.ClassifyRequest]:
            try:
                for index, batch in enumerate(batches):
                    split = self._parts(batch, batch_size, timeout)
                    parts.append(len(split))  # before its first part goes
                    to = (model, version)
                    for number, part in enumerate(split):
                        request = encode_request(part, *to, str(index))
                        sent.append(time.monotonic())
                        yield request
                        # the rest to the version the first got (None: the caller stopped)
                        if (number == 0 and len(split) > 1 and not version
                                and (to := firsts.get()) is None):
                            return
                sent.append(time.monotonic())  # the stream's end, what the last wait is for
            except Exception as error:  # gRPC says only "Exception iterating requests!"
                failed.append(error)
                raise

        call = self._stub.ClassifyStream(requests())
        watch = AnswerWatch(call, timeout, sent) if timeout else None
        answers: list[Classification] = []  # the parts of a batch answered so far
        try:
            for received in itertools.count():
                if watch:
                    watch.awaited = (received, time.monotonic())
                try:
                    response = next(call)
                except StopIteration:
                    return
                except grpc.RpcError:
                    if failed:  # the caller's error, not gRPC's UNKNOWN for it
                        raise failed[0] from None
                    if watch and watch.fired:
                        self._hung = True
                        raise NoAnswer(timeout) from None
                    with failures():
                        raise
                answers.append(decode_response(response))
                if len(answers) < parts[0]:
                    if len(answers) == 1 and not version:  # the first part's: the rest go
                        firsts.put((answers[0].model.name, answers[0].model.version))
                    continue
                if watch:
                    watch.awaited = None  # not while the caller has the answer
                parts.popleft()
                yield joined(answers)
                answers = []
        finally:
            firsts.put(None)  # a split batch's rest, still waiting, is not sent
            if watch:
                watch.ended.set()

    def list_models(self, *, timeout: float | None = CLIENT_TIMEOUT) -> list[pb.ModelInfo]:
        with failures():
            return list(self._stub.ListModels(pb.ListModelsRequest(),
                                              timeout=self._seconds(timeout)).models)

    def get_model(self, name: str, version: int = 0, *,
                  timeout: float | None = CLIENT_TIMEOUT) -> pb.ModelInfo:
        with failures():
            return self._stub.GetModel(pb.GetModelRequest(name=text("name", name),
                                                          version=version_number(version)),
                                       timeout=self._seconds(timeout))

    def max_request_images(self, model: str = "", version: int = 0, *,
                           timeout: float | None = CLIENT_TIMEOUT) -> int:
        """The most images one call may carry: the server's --max-request-images, which the
        Open Inference Protocol's ModelConfig gives as ``max_batch_size`` (any model's).
        ``model`` "" is the server's default, as for ``classify`` (the protocol has none: it
        was NOT_FOUND); the limit being every model's, any loaded one is asked then, at its
        newest version, whatever ``version``; ``timeout`` bounds each of its calls."""
        from inference import grpc_service_pb2 as inference_pb
        from inference import grpc_service_pb2_grpc as inference_grpc

        timeout = self._seconds(timeout)
        if not model:
            model, version = self.list_models(timeout=timeout)[0].name, 0
        request = inference_pb.ModelConfigRequest(name=text("model", model),
                                                  version=str(version_number(version) or ""))
        stub = inference_grpc.GRPCInferenceServiceStub(self._channel)
        with failures():
            config = stub.ModelConfig(request, timeout=timeout).config
        self._most_images = config.max_batch_size  # for classify's parts, asked once
        return self._most_images

    def _parts(self, images: np.ndarray, batch_size: int | None,
               timeout: float | None) -> list[np.ndarray]:
        """``images``, checked, in parts one call may carry: the server's --max-request-images
        (asked once, for more than one image), or ``batch_size`` if fewer."""
        if batch_size is not None and integer("batch_size", batch_size,
                                              "None: the server's limit") < 1:
            raise ValueError(f"batch_size: expected a count >= 1, got {batch_size}")
        images = as_images(images)
        step = max(len(images), 1)  # no image: one call, which the server refuses, saying why
        if step > 1:
            most = self._most_images or self.max_request_images(timeout=timeout)
            step = min(step, batch_size or step, most)
        return [images[start : start + step] for start in range(0, max(len(images), 1), step)]

    def _seconds(self, timeout: float | None) -> float | None:
        """A call's ``timeout``, checked, or the client's."""
        return self.timeout if timeout is CLIENT_TIMEOUT else checked_timeout(timeout)

    def close(self) -> None:
        """Closes the channel: a later call is a ValueError that says so; closing again does
        nothing, as for a file. After a stream whose answer did not come, on a thread of its
        own, not waited for: gRPC waits for the writes queued to the server for as long as it
        stays hung (`fmnist score` never ended)."""
        if not isinstance(self._channel, _Closed):
            channel, self._channel, self._stub = self._channel, *[_Closed(self.target)] * 2
            if self._hung:
                threading.Thread(target=channel.close, daemon=True).start()
            else:
                channel.close()

    def __enter__(self) -> "ClassifierClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
