"""gRPC servicers: thin adapters from messages to ``serving.service`` and back.

``errors.handle_errors`` is the one place domain errors become status codes; every servicer
method is wrapped with it.
"""
