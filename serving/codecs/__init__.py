"""Conversions between protobuf messages and numpy arrays, with the validation of what the
messages carry.

``images`` holds the checks every API shares (batch limits, image size and shape); each API has
its own module (``classifier`` for fashion_mnist.v1, ``inference`` for the Open Inference
Protocol) built on them. What HTTP bodies carry becomes those messages in ``serving.http``.
"""
