"""The PEM files of TLS, read and checked before gRPC gets them: the server's certificate, key
and client CA (``serving.security``) and the client's CA, certificate and key
(``serving.client.security``). Standard library only."""

import ssl
from collections.abc import Sequence
from pathlib import Path


def read_pem(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def check_pem_files(cert_file: str | Path | None, key_file: str | Path | None,
                    ca_file: str | Path | None, names: Sequence[str] = ()) -> None:
    """ValueError naming the file unless ``cert_file`` and ``key_file`` are a PEM certificate
    chain and its (unencrypted) key and ``ca_file`` holds PEM certificates: gRPC would only
    fail later, as a port it "cannot bind" or a handshake that fails. A file is named by its
    path, or by its entry in ``names`` (the cert's, the key's, the CA's: fmnist-serve's flag or
    variable and path, ``common.flags.given``). Unreadable: OSError, or with ``names`` a
    ValueError so named."""
    paths = (cert_file, key_file, ca_file)
    cert_name, key_name, ca_name = named = names or paths
    for path, name in zip(paths, named, strict=True):
        try:  # ssl's OSError names no file
            if path:
                open(path, "rb").close()
        except OSError as error:
            if not names:
                raise
            raise ValueError(f"{name}: {error.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cert_file:
            files, what = f"{cert_name} and {key_name}", "a PEM certificate chain and its key"
            context.load_cert_chain(cert_file, key_file, password="")
        if ca_file:
            files, what = str(ca_name), "PEM certificates"
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
