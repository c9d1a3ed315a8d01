"""Test-side aio channels with TLS and the bearer token (the server's clients are synchronous:
``serving.client.security.ChannelSecurity``)."""

from collections.abc import Sequence
from pathlib import Path

from grpc import aio

from serving.client.security import auth_metadata, channel_credentials


class _TokenAdder:
    """Adds the bearer token to the metadata of a call of an aio channel, TLS or not."""

    def __init__(self, token: str) -> None:
        self._metadata = auth_metadata(token)

    def _with_token(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(details.metadata or ()), *self._metadata)
        return details._replace(metadata=metadata)


# An aio channel files each interceptor under the first call kind it implements, so each kind
# needs its own class.
class _UnaryUnaryToken(_TokenAdder, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._with_token(client_call_details), request)


class _UnaryStreamToken(_TokenAdder, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._with_token(client_call_details), request)


class _StreamUnaryToken(_TokenAdder, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._with_token(client_call_details), request_iterator)


class _StreamStreamToken(_TokenAdder, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._with_token(client_call_details), request_iterator)


def token_interceptors(token: str) -> list[aio.ClientInterceptor]:
    """Client interceptors that send ``token`` with every call of an aio channel."""
    kinds = (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    return [kind(token) for kind in kinds]


def aio_channel(
    target: str,
    *,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls: bool = False,
    token: str | None = None,
    options: Sequence[tuple[str, object]] = (),
) -> aio.Channel:
    """An aio channel to ``target``: TLS when ``tls`` or any TLS file is given, with the bearer
    token on every call when ``token`` is given."""
    interceptors = token_interceptors(token) if token else None
    if tls or tls_ca or tls_cert or tls_key:
        credentials = channel_credentials(tls_ca, tls_cert, tls_key)
        return aio.secure_channel(target, credentials, options, interceptors=interceptors)
    return aio.insecure_channel(target, options, interceptors=interceptors)
