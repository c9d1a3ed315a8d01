"""The server's TLS: PEM files named in the settings, checked before gRPC gets them (the
bearer token is the call pipeline's, ``serving.pipeline``; the client's side of both is
``serving.client.security``).
"""

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


def read_pem(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def check_pem_files(cert_file: str | Path | None, key_file: str | Path | None,
                    ca_file: str | Path | None) -> None:
    """ValueError naming the file unless ``cert_file`` and ``key_file`` are a PEM certificate
    chain and its (unencrypted) key and ``ca_file`` holds PEM certificates: gRPC would only
    fail later, as a port it "cannot bind" or a handshake that fails. OSError if unreadable."""
    for path in filter(None, (cert_file, key_file, ca_file)):  # ssl's OSError names no file
        open(path, "rb").close()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cert_file:
            files, what = f"{cert_file} and {key_file}", "a PEM certificate chain and its key"
            context.load_cert_chain(cert_file, key_file, password="")
        if ca_file:
            files, what = str(ca_file), "PEM certificates"
            context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as error:
        why = _PEM_ERRORS.get(error.reason, error.reason or "not PEM, or a key that needs a "
                              "password")
        raise ValueError(f"{files}: expected {what}: {why}") from None


_PEM_ERRORS = {"KEY_VALUES_MISMATCH": "the key is not the certificate's",
               "NO_CERTIFICATE_OR_CRL_FOUND": "no certificate in it",
               # OpenSSL's default security level, which the native server's gRPC C++ keeps
               "EE_KEY_TOO_SMALL": "the key is too small (RSA: 2048 bits at least)",
               "CA_MD_TOO_WEAK": "signed with too weak a digest (SHA-256 at least)"}


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
        return cls(read_pem(cert_file), read_pem(key_file), read_pem(client_ca_file))

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], self.client_ca,
                                           require_client_auth=self.client_ca is not None)
