"""What a failed call leaves behind: nothing once it has ended, not even until the garbage
collector's next pass."""

import contextlib
import gc
import weakref

import grpc
import pytest

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from serving.errors import InvalidArgument
from serving.pipeline import Admission, Call, CallPipeline
from tests.conftest import running_server


class _Request:
    """A request the test can watch (protobuf messages take no weak reference)."""


def _refuse(request, call):
    raise InvalidArgument("images: expected at most 1024 images per request")


def test_a_failed_call_is_freed_by_reference_counting_alone():
    """The pipeline raised a call's error from a frame whose locals held it: the error's
    traceback held that frame, a cycle that kept every frame of the call and its request until
    the collector's next pass. 64 refused requests of 3 MB at once left a worker at 400-690 MB
    RSS, 133 MB once collected (bench/memory.py's figures: README, "Memory")."""
    request = _Request()
    freed = weakref.ref(request)
    gc.collect()
    gc.disable()  # only reference counting frees it, as between the collector's passes
    try:
        with contextlib.suppress(InvalidArgument):
            CallPipeline("", Admission()).unary(Call("/fashion_mnist.v1.Classifier/Classify"),
                                                _refuse, request)
        del request
        assert freed() is None
    finally:
        gc.enable()


def test_a_refused_request_is_not_left_in_a_cycle(settings):
    """The same through a server, on each gRPC implementation: once the refusal's thread has
    let go of it, the request is in no cycle that only a collection would free."""
    request = pb.ClassifyRequest(images=[bytes(784)] * (settings.max_request_images + 1))
    gc.collect()
    gc.disable()
    try:
        with running_server(settings) as server, grpc.insecure_channel(
                f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ClassifierStub(channel)
            for _ in range(8):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Classify(request, timeout=10)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        gc.set_debug(gc.DEBUG_SAVEALL)  # stopped: every call thread has let go of its call
        gc.collect()
        held = sum(isinstance(found, pb.ClassifyRequest) for found in gc.garbage)  # the server's
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert held == 0
