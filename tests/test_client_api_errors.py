"""The Python API's errors, as a notebook or a batch job meets them from a real server: one
exception type for what the server (or gRPC) refused, a grpc.RpcError still, whose str() is one
line, ``CODE: details``, as `fmnist` says it."""

import pickle

import grpc
import numpy as np
import pytest

from serving.client.api import ClassifierClient, ClassifierError, NoAnswer
from serving.client.security import ChannelSecurity
from tests.conftest import local_settings, running_server

IMAGES = np.zeros((3, 28, 28), np.uint8)


def refusal(call) -> ClassifierError:
    """The error ``call()`` raised, checked to be one line, ``CODE: details``."""
    with pytest.raises(ClassifierError) as refused:
        call()
    error = refused.value
    assert isinstance(error, grpc.RpcError)  # `except grpc.RpcError` still catches it
    assert str(error) == f"{error.code().name}: {error.details()}"
    assert "\n" not in str(error)
    return error


def test_each_refusal_is_one_line_naming_its_code(target):
    """gRPC's own error printed five lines, `<_InactiveRpcError of RPC that terminated
    with: status = ... debug_error_string = ...>`, for every refusal, unary or streamed."""
    with ClassifierClient(target) as client:
        assert str(refusal(lambda: client.classify(IMAGES, model="nope"))) == (
            "NOT_FOUND: model: no model 'nope'; loaded models: baseline, mlp, softmax")
        assert str(refusal(lambda: client.classify(IMAGES, model="mlp", version=99))) == (
            "NOT_FOUND: version: model 'mlp' has no version 99; loaded versions: 1, 2")
        assert str(refusal(lambda: client.classify(IMAGES[:0]))) == (
            "INVALID_ARGUMENT: images: expected at least 1 image, got 0")
        assert str(refusal(lambda: list(client.classify_batches([IMAGES], model="nope")))) == (
            "NOT_FOUND: request 0 ('0'): model: no model 'nope'; loaded models: baseline, mlp, "
            "softmax")
        assert refusal(lambda: client.get_model("nope")).code() == grpc.StatusCode.NOT_FOUND
        assert refusal(lambda: client.max_request_images("nope")).code() == (
            grpc.StatusCode.NOT_FOUND)


def test_a_refused_token_and_a_server_gone_are_one_line_too(model_repository):
    settings = local_settings(model_repository=model_repository, auth_token="s3cret-token")
    with running_server(settings) as server:
        target = f"127.0.0.1:{server.port}"
        for token in (None, "wrong"):
            with ClassifierClient(target, security=ChannelSecurity(token=token)) as client:
                assert str(refusal(lambda: client.classify(IMAGES))) == (
                    "UNAUTHENTICATED: missing or invalid bearer token (authorization: Bearer "
                    "TOKEN)")
                assert refusal(lambda: list(client.classify_batches([IMAGES]))).code() == (
                    grpc.StatusCode.UNAUTHENTICATED)
    with ClassifierClient(target, timeout=10) as client:
        error = refusal(lambda: client.classify(IMAGES))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details().endswith("Connection refused"), error.details()


def test_a_refusal_crosses_processes_whole(target):
    """A batch job's worker process (multiprocessing, ProcessPoolExecutor) hands its error to
    the parent pickled: unpickling called ClassifierError(message) and failed, TypeError, in
    place of the server's refusal."""
    with ClassifierClient(target) as client:
        error = refusal(lambda: client.classify(IMAGES, model="nope"))
    for sent in (error, NoAnswer(1.5)):
        came = pickle.loads(pickle.dumps(sent))
        assert (type(came), came.code(), came.details(), str(came)) == (
            type(sent), sent.code(), sent.details(), str(sent))


CALLS = {"classify": lambda client: client.classify(IMAGES),
         "classify_batches": lambda client: list(client.classify_batches([IMAGES])),
         "list_models": lambda client: client.list_models(),
         "get_model": lambda client: client.get_model("mlp"),
         "max_request_images": lambda client: client.max_request_images("mlp")}


@pytest.mark.parametrize("method", CALLS)
def test_a_closed_client_says_so(target, method):
    """A call after ``close()`` (or after the client's ``with``) raised gRPC's own words,
    "ValueError: Cannot invoke RPC on closed channel!", naming no client (max_request_images
    crashed the process, a segmentation fault in gRPC); closing twice is fine, as for a file."""
    with ClassifierClient(target) as client:
        pass
    client.close()
    with pytest.raises(ValueError) as refused:
        CALLS[method](client)
    assert str(refused.value) == (f"this ClassifierClient ({target}) is closed: make a new one, "
                                  "or call it within its `with` block")


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda client: client.classify(IMAGES, model=5), TypeError,
     "model: expected a str ('': the server's default), got int"),
    (lambda client: client.classify(IMAGES, version="2"), TypeError,
     "version: expected an int (0: the newest), got str"),
    (lambda client: client.classify(IMAGES, version=1.0), TypeError,
     "version: expected an int (0: the newest), got float"),
    (lambda client: client.classify(IMAGES, version=2**64), ValueError,
     "version: expected 0 (the newest) or a version 1..2^63-1, got 18446744073709551616"),
    (lambda client: client.classify(IMAGES, request_id=7), TypeError,
     "request_id: expected a str, got int"),
    (lambda client: client.classify(IMAGES, batch_size=2.5), TypeError,
     "batch_size: expected an int (None: the server's limit), got float"),
    (lambda client: client.classify(IMAGES, batch_size="3"), TypeError,
     "batch_size: expected an int (None: the server's limit), got str"),
    (lambda client: list(client.classify_batches([IMAGES], version="1")), TypeError,
     "version: expected an int (0: the newest), got str"),
    (lambda client: client.get_model("mlp", version="1"), TypeError,
     "version: expected an int (0: the newest), got str"),
    (lambda client: client.get_model(None), TypeError,
     "name: expected a str, got NoneType"),
    (lambda client: client.classify(IMAGES[0].astype(np.float32)), ValueError,
     "expected uint8 images [N,28,28], got float32 (28, 28)"),
])
def test_an_argument_that_cannot_be_sent_is_named(target, call, error, message):
    """`client.classify(images, version="2")` (a value read from a form or an env var) raised
    protobuf's "TypeError: 'str' object cannot be interpreted as an integer", `model=5` its
    "bad argument type for built-in operation", 2**64 "ValueError: Value out of range", and
    batch_size=2.5 range()'s: none named the argument; get_model(None) asked for model ''.
    One line naming it, as the server's refusals do; a [28,28] image of floats was said to be
    (1, 28, 28)."""
    with ClassifierClient(target) as client, pytest.raises(error) as caught:
        call(client)
    assert str(caught.value) == message
