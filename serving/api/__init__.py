"""The data plane: the domain API (``classifier``) and the Open Inference Protocol
(``inference``), plain synchronous Python on protobuf messages, no transport. Every
transport calls them through ``serving.pipeline``, the one place their errors
(``serving.errors``) become status codes.
"""
