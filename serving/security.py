"""The server's TLS: PEM files named in the settings, checked before gRPC gets them
(``common.pem``, as the client checks its own; the bearer token is the call pipeline's,
``serving.pipeline``; the client's side of both is ``serving.client.security``).
"""

from dataclasses import dataclass
from pathlib import Path

from common.pem import check_pem_files, read_pem


@dataclass(frozen=True)
class ServerTls:
    """What a TLS server needs, read once from the PEM files; ``client_ca`` means mutual TLS
    (clients must show a certificate that CA signed)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def read(cls, cert_file: str | Path, key_file: str | Path,
             client_ca_file: str | Path | None = None, names: tuple[str, ...] = ()) -> "ServerTls":
        """``names``: how an error names each file (``common.pem.check_pem_files``)."""
        check_pem_files(cert_file, key_file, client_ca_file, names)
        return cls(read_pem(cert_file), read_pem(key_file), read_pem(client_ca_file))
