"""Training, evaluation and ONNX export of the Fashion-MNIST models.

The package itself imports nothing heavy: TensorFlow and scikit-learn are loaded only by the
modules that fit or export models, so the contract modules (classes, preprocessing, repository)
stay usable without them.
"""
