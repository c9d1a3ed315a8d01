"""TLS and port settings the server cannot serve with: refused at start, with one line that
names the file or the flag (and the client's credentials the same)."""

import os
import re
import socket
import subprocess
import sys

import pytest

from serving.client import cli as client_cli
from serving.client import security as client_security
from serving.server import ListenError, ModelServer
from serving.settings import Settings
from tests.conftest import held_port, local_settings, running_server
from tests.http_helpers import http_server, http_settings


def test_the_server_needs_both_certificate_and_key(pki, model_repository):
    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        Settings(model_repository=model_repository, tls_cert=str(pki.server_cert))
    with pytest.raises(ValueError, match="--tls-client-ca"):
        Settings(model_repository=model_repository, tls_client_ca=str(pki.ca))


@pytest.mark.parametrize(("names", "why"), [
    (("server_key", "server_cert", None), "not PEM, or a key that needs a password"),  # swapped
    (("server_cert", "client_key", None), "the key is not the certificate's"),
    (("server_cert", "server_key", "server_key"), "no certificate in it"),
])
def test_tls_files_that_are_not_a_certificate_and_its_key_fail_with_one_line(
        pki, model_repository, grpc_server, names, why):
    """gRPC itself took them, then failed to "bind" the port, or (a client) to connect."""
    files = [getattr(pki, name) if name else None for name in names]  # cert, key, CA
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              tls_cert=str(files[0]), tls_key=str(files[1]),
                              tls_client_ca=str(files[2] or ""), grpc_server=grpc_server)
    with pytest.raises(ListenError) as refused, running_server(settings):
        pass
    assert str(refused.value).startswith("--tls-") and str(refused.value).endswith(why)
    with pytest.raises(ValueError, match=why):
        client_security.channel_credentials(files[2], files[0], files[1])


@pytest.mark.parametrize("which", ["tls_cert", "tls_key", "tls_client_ca"])
def test_a_tls_file_that_cannot_be_read_is_named(pki, model_repository, tmp_path, which):
    """ssl's error names no file ("cannot read a TLS file: [Errno 2] No such file or
    directory"): the operator could not tell the certificate from the key or the CA. Its
    flag names it now, as the client's (fmnist-serve's own: below)."""
    files = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key),
             "tls_client_ca": str(pki.ca), which: str(tmp_path / "missing.pem")}
    settings = local_settings(model_repository=model_repository, poll_interval=0, **files)
    with pytest.raises(ListenError) as refused, running_server(settings):
        pass
    assert str(refused.value) == (f"--{which.replace('_', '-')} {tmp_path}/missing.pem: "
                                  "No such file or directory")
    with pytest.raises(OSError, match=re.escape("missing.pem")):
        client_security.channel_credentials(files["tls_client_ca"], files["tls_cert"],
                                            files["tls_key"])


def test_the_tls_files_are_read_before_the_models_are_loaded(pki, tmp_path):
    """A missing key was found only once every model had loaded (a minute for large ones, in
    each worker), and a repository's error hid it."""
    settings = local_settings(model_repository=tmp_path, poll_interval=0,  # no model in it
                              tls_cert=str(pki.server_cert), tls_key=str(tmp_path / "k.pem"))
    with pytest.raises(ListenError, match=r"^--tls-key .*k\.pem: No such file or directory$"):
        ModelServer.from_settings(settings)


def test_a_key_too_small_for_openssl_is_refused_with_one_line(tmp_path, model_repository,
                                                              grpc_server):
    """The native server's gRPC C++ (system OpenSSL, default security level) refuses a
    1024-bit RSA key, as "cannot bind"; grpcio (BoringSSL) took it. Both refuse it now, and
    say why."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.pki import _certificate, _write

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert = _write(tmp_path / "small.pem", _certificate("localhost", key, "localhost", key,
                                                        server=True))
    key_file = _write(tmp_path / "small.key", key=key)
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              tls_cert=str(cert), tls_key=str(key_file), grpc_server=grpc_server)
    why = "the key is too small (RSA: 2048 bits at least)"
    with pytest.raises(ListenError, match=re.escape(why)), running_server(settings):
        pass
    with pytest.raises(ValueError, match=re.escape(why)):
        client_security.channel_credentials(None, cert, key_file)


def test_a_taken_health_port_fails_the_start_naming_it(model_repository, grpc_server):
    """It named the gRPC port ("cannot listen on 127.0.0.1:PORT: ... cannot bind HEALTH")."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        health_port = taken.getsockname()[1]
        settings = local_settings(model_repository=model_repository, poll_interval=0,
                                  health_port=health_port, grpc_server=grpc_server)
        with pytest.raises(ListenError) as refused, running_server(settings):
            pass
    assert str(refused.value).startswith(
        f"cannot listen for health (--health-port) on 127.0.0.1:{health_port}: ")


def test_a_client_that_a_tls_server_hangs_up_on_is_told_what_it_may_lack(
        pki, model_repository, capsys, grpc_server):
    """A mutual TLS server closes the connection of a plaintext client, and of one without a
    certificate it trusts, saying nothing: fmnist said only "...: Socket closed"."""
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              grpc_server=grpc_server, tls_cert=str(pki.server_cert),
                              tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    rogue = ["--tls-cert", str(pki.rogue_client_cert), "--tls-key", str(pki.rogue_client_key)]
    with running_server(settings) as server:
        for flags, hint in (
            ([], "if it serves TLS, add --tls"),
            (["--tls-ca", str(pki.ca)], "if it asks for a client certificate, give --tls-cert"),
            (["--tls-ca", str(pki.ca), *rogue], "it may not trust the CA that signed --tls-cert"),
        ):
            assert client_cli.main(["health", "--target", f"localhost:{server.port}",
                                    "--timeout", "5", *flags]) == 1
            error = capsys.readouterr().err
            assert error.startswith("fmnist health: error: UNAVAILABLE: "), error
            assert error.count("\n") == 1 and hint in error, error


def test_a_client_sent_to_the_http_port_is_told_to_use_the_grpc_one(model_repository, capsys):
    """The serving line names both ports (`address=...:50051 ... http=http://...:8080/`):
    `fmnist health --target 127.0.0.1:8080` said only "if it serves TLS, add --tls", which
    sent a newcomer looking for certificates the server does not have."""
    with http_server(http_settings(model_repository)) as (server, _):
        assert client_cli.main(["health", "--target", f"127.0.0.1:{server.http_port}",
                                "--timeout", "5"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fmnist health: error: UNAVAILABLE: "), error
    assert error.count("\n") == 1 and "HTTP port (--http-port)" in error, error
    # fmnist has no --port: the port to give is fmnist-serve's, in --target
    assert "--target its gRPC port (--port)" in error, error


def test_a_client_sent_where_nothing_listens_is_asked_whether_the_server_runs(capsys):
    """`fmnist classify` with no server up (or the wrong port) said only gRPC's "failed to
    connect to all addresses; ... Connection refused", in words a newcomer does not read as
    "nothing listens there"."""
    port = held_port()
    assert client_cli.main(["health", "--target", f"127.0.0.1:{port}", "--timeout", "5"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fmnist health: error: UNAVAILABLE: "), error
    assert error.count("\n") == 1, error
    assert error.rstrip().endswith(f"(nothing listens on 127.0.0.1:{port}: is fmnist-serve "
                                   "running, and is --target its gRPC address?)"), error


@pytest.mark.parametrize(("given", "message"), [
    (["--tls-ca", "{text}"], "--tls-ca {text}: expected PEM certificates: no certificate in it"),
    (["--tls", "FMNIST_TLS_CA={text}"],
     "FMNIST_TLS_CA={text}: expected PEM certificates: no certificate in it"),
    (["--tls-cert", "{cert}", "--tls-key", "{text}"], "--tls-cert {cert} and --tls-key {text}: "
     "expected a PEM certificate chain and its key: not PEM, or a key that needs a password"),
    (["--tls-key", "{key}", "FMNIST_TLS_CERT={cert}"], "FMNIST_TLS_CERT={cert} and --tls-key "
     "{key}: expected a PEM certificate chain and its key: the key is not the certificate's"),
])
def test_a_tls_file_that_is_not_what_it_should_be_is_named_by_its_flag(capsys, monkeypatch, pki,
                                                                       given, message):
    """`--tls-ca notes.txt` said "notes.txt: expected PEM certificates: ...", and an
    FMNIST_TLS_CA set in a CI job's variables was named as a path only: which setting was
    it? (``given``: flags, and FMNIST_* variables set)"""
    (pki.ca.parent / "notes.txt").write_text("not a certificate\n")
    files = {"text": pki.ca.parent / "notes.txt", "cert": pki.client_cert, "key": pki.server_key}
    given = [word.format(**files) for word in given]
    for setting in (word for word in given if word.startswith("FMNIST_")):
        monkeypatch.setenv(*setting.split("=", 1))
    flags = [word for word in given if not word.startswith("FMNIST_")]
    assert client_cli.main(["health", "--target", "127.0.0.1:9", *flags]) == 1
    assert capsys.readouterr().err == f"fmnist health: error: {message.format(**files)}\n"


@pytest.mark.parametrize(("given", "message"), [
    (["--tls-cert", "{missing}", "--tls-key", "{key}"],
     "--tls-cert {missing}: No such file or directory"),
    (["--tls-cert", "{cert}", "FMNIST_TLS_KEY={missing}"],
     "FMNIST_TLS_KEY={missing}: No such file or directory"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{missing}"],
     "--tls-client-ca {missing}: No such file or directory"),
    (["--tls-cert", "{key}", "--tls-key", "{cert}"], "--tls-cert {key} and --tls-key {cert}: "
     "expected a PEM certificate chain and its key: not PEM, or a key that needs a password"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "FMNIST_TLS_CLIENT_CA={key}"],
     "FMNIST_TLS_CLIENT_CA={key}: expected PEM certificates: no certificate in it"),
])
def test_a_tls_file_the_server_cannot_use_is_named_by_its_flag(pki, model_repository, tmp_path,
                                                               given, message):
    """fmnist-serve said "cannot read a TLS file: [Errno 2] No such file or directory: '/x.pem'"
    or "TLS: /c.pem and /k.pem: expected ...": which of three settings, a flag or a variable
    of the deployment's, gave the path? Named as the client names its own (above)."""
    files = {"missing": tmp_path / "missing.pem", "cert": pki.server_cert, "key": pki.server_key}
    given = [word.format(**files) for word in given]
    variables = dict(word.split("=", 1) for word in given if word.startswith("FMNIST_"))
    started = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(model_repository), "--host",
         "127.0.0.1", "--port", "0", "--http-port", "0", "--workers", "1",
         *(word for word in given if not word.startswith("FMNIST_"))],
        env={**os.environ, **variables}, capture_output=True, text=True, timeout=60, check=False)
    assert (started.returncode, started.stderr) == (
        1, f"fmnist-serve: error: {message.format(**files)}\n")


def test_a_client_whose_tls_does_not_fit_the_server_is_told_what_to_change(
        pki, model_repository, capsys):
    """OpenSSL's words were all the line said: 'Tls handshake failed (TSI_PROTOCOL_FAILURE):
    SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid
    certificate verification context: OK' for --tls (or FMNIST_TLS=1 left set) against a
    plaintext server, 'CERTIFICATE_VERIFY_FAILED: self signed certificate in certificate
    chain' for a CA that did not sign the server's certificate, 'Hostname Verification Check
    failed' for a name it does not carry."""
    plain = local_settings(model_repository=model_repository, poll_interval=0)
    tls = local_settings(model_repository=model_repository, poll_interval=0,
                         tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with running_server(plain) as plain_server, running_server(tls) as tls_server:
        for server, flags, hint in (
            (plain_server, ["--tls"], "(the server does not speak TLS: if it serves plaintext, "
             "drop --tls and --tls-*, or FMNIST_TLS*)"),
            (tls_server, ["--tls-ca", str(pki.rogue_ca)], "(the server's certificate is not "
             "signed by a CA this client trusts: --tls-ca the CA that signed it)"),
            (tls_server, ["--tls"], "(the server's certificate is not signed by a CA this "
             "client trusts: --tls-ca the CA that signed it)"),
            (tls_server, ["--tls-ca", str(pki.ca), "--tls-server-name", "other.example"],
             "(the server's certificate does not carry the name other.example: "
             "--tls-server-name one of its names)"),
        ):
            assert client_cli.main(["health", "--target", f"localhost:{server.port}",
                                    "--timeout", "5", *flags]) == 1
            error = capsys.readouterr().err
            assert error.startswith("fmnist health: error: UNAVAILABLE: "), error
            assert error.count("\n") == 1 and error.endswith(f" {hint}\n"), error


def test_an_expired_certificate_is_not_said_to_be_another_cas(tmp_path, model_repository,
                                                              capsys):
    """OpenSSL's CERTIFICATE_VERIFY_FAILED has many reasons: a server certificate that had
    expired, signed by the very CA given, was told '--tls-ca the CA that signed it'; the
    reason OpenSSL gives ('certificate has expired') now stands without that advice."""
    from tests.pki import make_service_pki

    ca, cert, key = make_service_pki(tmp_path, "localhost", expired=True)
    tls = local_settings(model_repository=model_repository, poll_interval=0,
                         tls_cert=str(cert), tls_key=str(key))
    with running_server(tls) as server:
        assert client_cli.main(["health", "--target", f"localhost:{server.port}", "--timeout",
                                "5", "--tls-ca", str(ca)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.endswith(": certificate has expired: OK\n"), error
