"""The client side of the Fashion-MNIST service: the Python API (``from serving.client import
ClassifierClient``, ``ChannelSecurity``, ``ClassifierError``) and the ``fmnist`` command line.
Needs grpcio, numpy (and Pillow for PNG files), never onnxruntime or the training package;
this module imports the API only when one of its names is asked for, so that ``fmnist
health`` starts fast."""

import importlib

DEFAULT_TARGET = "127.0.0.1:50051"  # the server's default port, on this host
LB_POLICIES = ("pick_first", "round_robin")  # gRPC's load-balancing policies, default first
# the API's names, by the module that defines each
_API = {"ClassifierClient": "api", "Classification": "answers", "ModelAnswer": "answers",
        "ClassifierError": "errors", "ChannelSecurity": "security"}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
