"""TLS, mutual TLS and the bearer token on the HTTP side, as on gRPC's (tests/test_security.py
makes the certificates): every endpoint but health and the page needs the token; a TLS port
serves nothing in plaintext or to a client without the client CA's certificate."""

import logging
import resource
import socket

import numpy as np
import pytest
import requests

from serving.client import cli as client_cli
from tests.http_helpers import http_server, http_settings

TOKEN = "http-s3cret"
GUARDED = [("GET", "/v2"), ("GET", "/v2/models/mlp"), ("GET", "/v2/models/mlp/ready"),
           ("GET", "/v2/models/mlp/config"), ("GET", "/v2/models/stats"),
           ("POST", "/v2/models/mlp/infer"), ("POST", "/v1/classify"), ("GET", "/v1/models"),
           ("GET", "/v1/models/mlp"), ("GET", "/v1/test-images/random")]
IDLE = 1_100  # connections that send nothing
OPEN = ["/v2/health/live", "/v2/health/ready", "/"]
INFER = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28],
                     "data": np.zeros(784, np.uint8).tolist()}]}


@pytest.fixture(scope="module")
def token_url(model_repository):
    with http_server(http_settings(model_repository, auth_token=TOKEN)) as (_, url):
        yield url


@pytest.mark.parametrize(("verb", "path"), GUARDED)
def test_every_endpoint_but_health_and_the_page_needs_the_token(token_url, verb, path):
    body = {"json": INFER} if path.endswith("infer") else {}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        refused = requests.request(verb, token_url + path, headers=headers, timeout=10, **body)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in refused.json()["error"]
    if path.endswith("infer"):
        for scheme in ("Bearer", "bearer", "BEARER"):  # RFC 7235: the scheme in any case
            answered = requests.post(token_url + path, json=INFER, timeout=10,
                                     headers={"Authorization": f"{scheme} {TOKEN}"})
            assert answered.status_code == 200, (scheme, answered.text)


def test_health_and_the_page_are_open(token_url):
    for path in OPEN:
        assert requests.get(token_url + path, timeout=5).status_code == 200, path


def test_the_start_up_line_under_tls_and_token_names_https_and_a_command_that_works(
        model_repository, pki, caplog):
    """It said http:// for an HTTPS port, and a client command without --tls-ca or --token."""
    caplog.set_level(logging.INFO, logger="serving.server")
    settings = http_settings(model_repository, tls_cert=str(pki.server_cert),
                             tls_key=str(pki.server_key), tls_client_ca=str(pki.ca),
                             auth_token=TOKEN, host="localhost")
    with http_server(settings) as (_, url):
        (line,) = [record.fields for record in caplog.records if record.msg == "serving"]
        assert line["http"] == url.replace("127.0.0.1", "localhost") + "/"
        command = (line["try"].replace("CA_OF_THE_CERT", str(pki.ca))
                   .replace("CLIENT.crt", str(pki.client_cert))
                   .replace("CLIENT.key", str(pki.client_key)).replace("TOKEN", TOKEN))
        assert command.split()[:2] == ["fmnist", "classify"]
        assert client_cli.main(command.split()[1:]) == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_the_start_up_command_names_localhost_when_the_server_listens_everywhere(
        model_repository, pki, host):
    """--target 0.0.0.0:50051 fails TLS's name check: a certificate never names 0.0.0.0 (the
    server is not started here: it would listen on every interface)."""
    from serving.server import _try_command

    settings = http_settings(model_repository, host=host, tls_cert=str(pki.server_cert),
                             tls_key=str(pki.server_key))
    assert _try_command(settings, 50051).startswith(
        "fmnist classify --target localhost:50051 --test-index 0 1 2 --tls-ca ")


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_the_start_up_url_names_localhost_when_the_server_listens_everywhere(host):
    """The line's try= said localhost, its http= https://0.0.0.0:8080/, which no certificate
    names ([::] no browser opens), while the ports, unchanged, name the host as it is."""
    from serving.settings import host_port

    assert host_port(host, 8080, by_name=True) == "localhost:8080"
    assert host_port(host, 8080) == ("0.0.0.0:8080" if host == "0.0.0.0" else "[::]:8080")


@pytest.fixture(scope="module")
def tls_url(model_repository, pki):
    settings = http_settings(model_repository, tls_cert=str(pki.server_cert),
                             tls_key=str(pki.server_key))
    with http_server(settings) as (_, url):
        yield url


def test_tls_serves_only_tls(tls_url, pki):
    answer = requests.post(f"{tls_url}/v2/models/mlp/infer", json=INFER, verify=pki.ca,
                           timeout=10)
    assert answer.status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tls_url}/v2/health/live", timeout=5)  # the system CAs do not trust it
    try:
        plain = requests.get(tls_url.replace("https://", "http://") + "/v1/models", timeout=5)
    except requests.exceptions.ConnectionError:
        return
    assert plain.status_code == 400 and "models" not in plain.text


@pytest.fixture(scope="module")
def mtls_url(model_repository, pki):
    settings = http_settings(model_repository, tls_cert=str(pki.server_cert),
                             tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    with http_server(settings) as (_, url):
        yield url


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(mtls_url, pki):
    url = f"{mtls_url}/v1/models"
    for cert in (None, (str(pki.rogue_client_cert), str(pki.rogue_client_key))):
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
            requests.get(url, verify=pki.ca, cert=cert, timeout=5)
    answer = requests.get(url, verify=pki.ca, timeout=5,
                          cert=(str(pki.client_cert), str(pki.client_key)))
    assert answer.status_code == 200 and answer.json()["models"]


def test_the_token_is_checked_before_the_body_is_read(token_url):
    """Without the token a body over the limit is 401, not 413: nothing of the request is
    looked at before the caller is known; the same connection then serves a good call."""
    with requests.Session() as session:
        too_big = session.post(f"{token_url}/v2/models/mlp/infer", data=b"x" * (1 << 23),
                               timeout=10)
        assert too_big.status_code == 401, too_big.text
        answered = session.post(f"{token_url}/v2/models/mlp/infer", json=INFER, timeout=10,
                                headers={"Authorization": f"Bearer {TOKEN}"})
        assert answered.status_code == 200, answered.text


def test_idle_connections_of_one_client_do_not_hold_the_port_from_others(model_repository):
    """granian took at most 1,024 connections at once, idle ones too: 1,100 sockets that sent
    nothing (no token, no TLS needed) held the HTTP port from everyone until its 30 s header
    timeout, and again as often as they reconnected."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4 * IDLE:  # both ends are ours
        pytest.skip("too few file descriptors for the idle connections and their server's")
    with http_server(http_settings(model_repository)) as (server, url):
        idle = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(IDLE)]
        try:
            assert requests.get(f"{url}/v2/health/live", timeout=10).status_code == 200
        finally:
            for connection in idle:
                connection.close()
