"""The data plane: the domain API (``classifier``) and the Open Inference Protocol
(``inference``), plain synchronous Python on protobuf messages, no transport. Every
transport calls them through ``serving.pipeline``, which turns whatever they raise into a
``serving.errors`` class; the transport sends that class's status (gRPC code, HTTP status).
"""
