"""The Fashion-MNIST model server (``fmnist-serve``) and its client (``serving.client``).

Importing this package loads nothing heavy, so the client and ``fmnist health`` stay fast; the
server modules pull in onnxruntime and grpc only when they are imported themselves.
"""

from common import __version__ as __version__  # the release's: the package's own attribute
from common.telemetry import without_onnxruntime_telemetry

without_onnxruntime_telemetry()
