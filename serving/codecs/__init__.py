"""Conversions between wire messages and numpy arrays, and all validation of request inputs.

``images`` holds the checks every API shares (batch limits, image size and shape); each API has
its own module (``classifier`` for fashion_mnist.v1) built on them.
"""
