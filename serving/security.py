"""Transport security and authentication, for the server and its clients.

TLS and mutual TLS come from PEM files named in the settings; the bearer token is checked by
the call pipeline (``serving.pipeline``) on every call except health's; clients add it here.
"""

import collections
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

AUTHORIZATION = "authorization"
BEARER = "Bearer "


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def check_pem_files(cert_file: str | Path | None, key_file: str | Path | None,
                    ca_file: str | Path | None) -> None:
    """ValueError naming the file unless ``cert_file`` and ``key_file`` are a PEM certificate
    chain and its (unencrypted) key and ``ca_file`` holds PEM certificates: gRPC would only
    fail later, as a port it "cannot bind" or a handshake that fails. OSError if unreadable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    checks = [(f"{cert_file} and {key_file}", lambda: context.load_cert_chain(
        cert_file, key_file, password=""))] if cert_file else []
    if ca_file:
        checks.append((str(ca_file), lambda: context.load_verify_locations(cafile=ca_file)))
    for files, check in checks:
        try:
            check()
        except ssl.SSLError as error:
            what = "a PEM certificate chain and its key" if " and " in files else \
                "PEM certificates"
            why = _PEM_ERRORS.get(error.reason, error.reason or "not PEM, or a key that needs "
                                  "a password")
            raise ValueError(f"{files}: expected {what}: {why}") from None


_PEM_ERRORS = {"KEY_VALUES_MISMATCH": "the key is not the certificate's",
               "NO_CERTIFICATE_OR_CRL_FOUND": "no certificate in it"}


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
        check_pem_files(cert_file, key_file, client_ca_file)
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
    check_pem_files(cert_file, key_file, ca_file)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file),
        certificate_chain=_read(cert_file),
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``, or none without one."""
    return ((AUTHORIZATION, BEARER + token),) if token else ()


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
