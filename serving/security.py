"""Transport security and authentication, for the server and its clients.

TLS and mutual TLS come from PEM files named in the settings; the bearer token is checked by a
server interceptor on every RPC except the gRPC health service, so that load balancers and
orchestrators can probe health without holding the secret.
"""

import collections
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

AUTHORIZATION = "authorization"
BEARER = "Bearer "
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


@dataclass(frozen=True)
class ServerTls:
    """What a TLS server needs, read once from the PEM files; ``client_ca`` means mutual TLS
    (clients must show a certificate that CA signed)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def read(cls, cert_file: str | Path, key_file: str | Path,
             client_ca_file: str | Path | None = None) -> "ServerTls":
        return cls(_read(cert_file), _read(key_file), _read(client_ca_file))

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def channel_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials for a client: ``ca_file`` to trust the server (default: the system roots),
    ``cert_file`` and ``key_file`` to prove the client's identity for mutual TLS."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs its key and the key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file),
        certificate_chain=_read(cert_file),
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``, or none without one."""
    return ((AUTHORIZATION, BEARER + token),) if token else ()


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that refuses the call before reading it."""

    async def refuse(_request_or_iterator, context: aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(aio.ServerInterceptor):
    """Lets a call through only with ``authorization: Bearer <token>`` (health is exempt).

    The comparison is constant-time so that response timing does not leak the token. A refused
    call never reaches the servicer and its request is never deserialised.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._expected = (BEARER + token).encode()

    def _authorised(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == AUTHORIZATION:
                given = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        if self._authorised(handler_call_details.invocation_metadata):
            return handler
        return _abort_handler(handler, "missing or invalid bearer token (authorization metadata)")


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


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client reaches the server: TLS (with a CA, or the system roots when only ``tls``),
    a client certificate for mutual TLS, and a bearer token."""

    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert or self.tls_key)

    def aio_channel(self, target: str, options: Sequence[tuple[str, object]] = ()):
        return aio_channel(target, tls=self.uses_tls, tls_ca=self.tls_ca, tls_cert=self.tls_cert,
                           tls_key=self.tls_key, token=self.token, options=options)

    def channel(self, target: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        """A synchronous channel to ``target``."""
        if self.uses_tls:
            credentials = channel_credentials(self.tls_ca, self.tls_cert, self.tls_key)
            channel = grpc.secure_channel(target, credentials, options)
        else:
            channel = grpc.insecure_channel(target, options)
        return grpc.intercept_channel(channel, _SyncToken(self.token)) if self.token else channel


class _SyncCallDetails(
    collections.namedtuple(
        "_SyncCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call of a synchronous channel."""

    def __init__(self, token: str) -> None:
        self._metadata = auth_metadata(token)

    def _with_token(self, details: grpc.ClientCallDetails) -> _SyncCallDetails:
        return _SyncCallDetails(
            details.method, details.timeout, [*(details.metadata or ()), *self._metadata],
            details.credentials, details.wait_for_ready, details.compression,
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)
