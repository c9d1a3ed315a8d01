"""Conversions between protobuf messages and numpy arrays, with the validation of what the
messages carry.

``images`` holds the batch size check every API shares and the domain API's image bytes; each
API has its own module (``classifier`` for fashion_mnist.v1, ``inference`` for the Open
Inference Protocol). What HTTP bodies carry becomes those messages in ``serving.http``.
"""
