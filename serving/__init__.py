"""The Fashion-MNIST model server (``fmnist-serve``) and its client (``serving.client``).

Importing this package loads nothing heavy, so the client and ``fmnist health`` stay fast; the
server modules pull in onnxruntime and grpc only when they are imported themselves.
"""

from common.telemetry import without_onnxruntime_telemetry

# The package's version, read here by pyproject.toml: ServerMetadata answers it from the code
# it runs, installed or not (importlib.metadata said "unknown" for a copied tree).
__version__ = "0.1.0"

without_onnxruntime_telemetry()
