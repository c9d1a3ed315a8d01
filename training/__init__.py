"""Training, evaluation and ONNX export of the Fashion-MNIST models.

The package itself imports nothing heavy: TensorFlow and scikit-learn are loaded only by the
modules that fit or export models, so the modules that write the contract (preprocessing,
repository) stay usable without them.
"""

from common.telemetry import without_onnxruntime_telemetry

without_onnxruntime_telemetry()
