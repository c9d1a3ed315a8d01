"""Request metrics for unary servicer methods: in flight, latency, and count by status code.

Applied outside ``handle_errors``, so it sees the status code that mapping chose. The model
label comes from the servicer's ``model_label(request)``, which keeps only names of loaded
models (any other name is "other"), so clients cannot grow the label set without bound.
"""

import functools

import grpc

from serving.metrics import CallMetrics

OTHER_MODEL = "other"


def instrumented(api: str):
    def decorate(method):
        calls = CallMetrics(api, method.__name__)

        @functools.wraps(method)
        async def observed(self, request, context):
            started = calls.started()
            code = "OK"
            try:
                return await method(self, request, context)
            except grpc.aio.AbortError:
                code = (context.code() or grpc.StatusCode.UNKNOWN).name
                raise
            except BaseException:
                code = grpc.StatusCode.CANCELLED.name
                raise
            finally:
                calls.finished(started, self.model_label(request), code)

        return observed

    return decorate
