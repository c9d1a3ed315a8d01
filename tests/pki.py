"""A throw-away PKI for TLS tests: a CA, a server certificate for localhost/127.0.0.1, a client
certificate, and a client certificate from an unrelated CA, as PEM files."""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for localhost/127.0.0.1 and a client certificate it
    signed, and a client certificate from an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


LOCAL_NAMES = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


def _certificate(subject, key, issuer, issuer_key, *, ca=False, server=False, client=False,
                 names=LOCAL_NAMES, expired=False):
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2 * expired)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, certificate=None, key=None) -> Path:
    if certificate is not None:
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def make_pki(directory: Path) -> Pki:
    """Generates the certificates of :class:`Pki` into ``directory``."""
    files = {}
    for ca_name in ("ca", "rogue_ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
        files[ca_name] = _write(directory / f"{ca_name}.pem", ca_cert)
        leaves = {"server": {"server": True}, "client": {"client": True}}
        prefix = "rogue_" if ca_name == "rogue_ca" else ""
        for leaf, usage in leaves.items():
            if prefix and leaf == "server":
                continue
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _certificate(f"{prefix}{leaf}", key, ca_name, ca_key, **usage)
            files[f"{prefix}{leaf}_cert"] = _write(directory / f"{prefix}{leaf}.pem", cert)
            files[f"{prefix}{leaf}_key"] = _write(directory / f"{prefix}{leaf}.key", key=key)
    return Pki(**files)


def make_service_pki(directory: Path, name: str, *, expired: bool = False
                     ) -> tuple[Path, Path, Path]:
    """(CA, server certificate, its key): a certificate naming only ``name``, as a Kubernetes
    Service's does (not 127.0.0.1, where a port-forward reaches it); ``expired``: valid only
    until a day ago (its CA is valid)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("service-ca", ca_key, "service-ca", ca_key, ca=True)
    cert = _certificate(name, key, "service-ca", ca_key, server=True, names=[x509.DNSName(name)],
                        expired=expired)
    return (_write(directory / "service-ca.pem", ca_cert),
            _write(directory / "service.pem", cert), _write(directory / "service.key", key=key))
