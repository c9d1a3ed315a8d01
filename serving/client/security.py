"""The client's transport security: TLS (with a CA, or the system roots), a client
certificate for mutual TLS, and the bearer token on every call."""

import argparse
import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from common.flags import bearer_token
from common.pem import check_pem_files, read_pem

AUTHORIZATION = "authorization"
BEARER = "Bearer "
# OpenSSL's reasons for a server certificate no CA this client trusts signed (of the many
# CERTIFICATE_VERIFY_FAILED gives: "certificate has expired" is another)
UNTRUSTED_ISSUER = ("self signed certificate", "self-signed certificate", "issuer certificate",
                    "unable to verify the first certificate")


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
        root_certificates=read_pem(ca_file),
        private_key=read_pem(key_file),
        certificate_chain=read_pem(cert_file),
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``, or none without one."""
    return ((AUTHORIZATION, BEARER + token),) if token else ()


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client reaches the server: TLS (with a CA, or the system roots when only ``tls``),
    a client certificate for mutual TLS, a bearer token, and the name the server's certificate
    is checked for (default: the target's host)."""

    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = field(default=None, repr=False)  # a logged repr must not show it
    tls_server_name: str | None = None

    def __post_init__(self):
        """A token no client can send is refused as fmnist's --token is (common.flags): gRPC
        failed every call "INTERNAL: Invalid metadata", as if the server were broken."""
        if self.token:
            try:
                bearer_token(self.token)
            except argparse.ArgumentTypeError as error:
                raise ValueError(f"token: {error}") from None

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert or self.tls_key
                    or self.tls_server_name)

    def explained(self, code: str, details: str, target: str) -> str:
        """A failed call's details, with what this client may lack when the server closed its
        new connection at once: a TLS server does so to a plaintext client, a mutual TLS one to
        a client without a certificate it trusts, and says no more ("Socket closed"); so does
        fmnist-serve's HTTP port, the other address its serving line names. A refused
        connection is said as what it means to a newcomer: nothing listens there; a connection
        that broke during a call ("Stream removed"), that the server went away, and one a
        stopping server's grace period ended ("Cancelling all calls"), so; OpenSSL's words
        for a TLS that does not fit the server's (a plaintext server, a certificate that
        another CA signed or that does not carry the name), what to change."""
        mid_call = {"Stream removed": f"the connection to {target} broke during the call: did "
                    "the server stop?", "Cancelling all calls": f"the server at {target} shut "
                    "down, and its grace period ended this call before it was done"}
        for words, why in mid_call.items():
            if code == "UNAVAILABLE" and details.startswith(words):
                return f"{details} ({why})"
        if code != "UNAVAILABLE" or not details.startswith("failed to connect"):
            return details
        if details.endswith(": Connection refused"):
            return (f"{details} (nothing listens on {target}: is fmnist-serve running, and is "
                    "--target its gRPC address?)")
        if why := self._tls_misfit(details):
            return f"{details} ({why})"
        if not details.endswith(": Socket closed"):
            return details
        if not self.uses_tls:
            why = ("the server closed the connection: if it serves TLS, add --tls, or --tls-ca "
                   "CA; if it is fmnist-serve's HTTP port (--http-port), --target its gRPC "
                   "port (--port)")
        elif not self.tls_cert:
            why = ("the server closed the connection in the TLS handshake: if it asks for a "
                   "client certificate, give --tls-cert and --tls-key")
        else:
            why = ("the server closed the connection in the TLS handshake: it may not trust the "
                   "CA that signed --tls-cert")
        return f"{details} ({why})"

    def _tls_misfit(self, details: str) -> str:
        """What to change when OpenSSL's words say this client's TLS does not fit the server's
        ("" if they do not)."""
        if "WRONG_VERSION_NUMBER" in details:  # a plaintext answer to the TLS hello
            return ("the server does not speak TLS: if it serves plaintext, drop --tls and "
                    "--tls-*, or FMNIST_TLS*")
        if "CERTIFICATE_VERIFY_FAILED" in details and any(  # not one that expired, say
                words in details for words in UNTRUSTED_ISSUER):
            return ("the server's certificate is not signed by a CA this client trusts: "
                    "--tls-ca the CA that signed it")
        if "Hostname Verification Check failed" in details:
            name = (f"the name {self.tls_server_name}" if self.tls_server_name
                    else "the target's host")
            return (f"the server's certificate does not carry {name}: --tls-server-name one of "
                    "its names")
        return ""

    def channel(self, target: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        """A synchronous channel to ``target``."""
        if self.uses_tls:
            credentials = channel_credentials(self.tls_ca, self.tls_cert, self.tls_key)
            if self.tls_server_name:
                options = [*options, ("grpc.ssl_target_name_override", self.tls_server_name)]
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
