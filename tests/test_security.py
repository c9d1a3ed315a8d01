"""TLS, mutual TLS and the bearer token, with real certificates made for each test session."""

import asyncio
import contextlib
import logging
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as pb_v2
from inference import grpc_service_pb2_grpc as pb_v2_grpc
from serving.client import cli as client_cli
from serving.client import security as client_security
from serving.grpc_transport import grpc_server as make_grpc_server
from serving.server import ModelServer
from serving.settings import Settings
from tests.aio_security import aio_channel
from tests.conftest import local_settings, running_server

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

TOKEN = "s3cret-token"


@contextlib.asynccontextmanager
async def _serving(model_repository, grpc_server, **security_settings):
    """The real server with ``security_settings`` (tls_cert, tls_key, tls_client_ca,
    auth_token); yields its port."""
    settings = local_settings(model_repository=model_repository,
                        parallel_inferences=1, poll_interval=0, grpc_server=grpc_server,
                        **security_settings)
    async with running_server(settings) as server:
        yield server.port


async def _health(channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status


async def _list_services(channel) -> list[str]:
    """Calls the reflection service, a streaming RPC."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = stub.ServerReflectionInfo(timeout=5)
    try:
        await call.write(request)
        await call.done_writing()
    except asyncio.InvalidStateError:  # refused before it read anything: read() says why
        pass
    response = await call.read()
    return [s.name for s in response.list_services_response.service]


IMAGE = bytes(range(256)) * 3 + bytes(16)


async def _every_guarded_rpc(channel) -> dict[str, object]:
    """One call of each kind and service (unary, streaming, both APIs, reflection): the
    outcome (a status code or an answer) per method."""
    classifier = pb_grpc.ClassifierStub(channel)
    inference = pb_v2_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ClassifyRequest(images=[IMAGE])
    calls = {
        "Classify": lambda: classifier.Classify(request, timeout=5),
        "ClassifyStream": lambda: _first(classifier.ClassifyStream(iter([request]), timeout=5)),
        "ListModels": lambda: classifier.ListModels(pb.ListModelsRequest(), timeout=5),
        "ModelReady": lambda: inference.ModelReady(pb_v2.ModelReadyRequest(name="mlp"),
                                                   timeout=5),
        "ModelMetadata": lambda: inference.ModelMetadata(
            pb_v2.ModelMetadataRequest(name="mlp"), timeout=5),
        "ServerReflectionInfo": lambda: _list_services(channel),
    }
    outcomes = {}
    for name, call in calls.items():
        try:
            outcomes[name] = await call()
        except grpc.aio.AioRpcError as error:
            outcomes[name] = error.code()
    return outcomes


async def _first(stream):
    async for response in stream:
        return response
    return None


async def test_token_guards_every_rpc_but_health(model_repository, grpc_server, caplog):
    """... and a refusal for want of the token is counted, logged at DEBUG only: anyone who
    reaches the port could fill the log with them (a WARNING line, 250 bytes, each)."""
    caplog.set_level(logging.DEBUG, logger="serving")
    async with _serving(model_repository, grpc_server, auth_token=TOKEN) as port:
        target = f"127.0.0.1:{port}"
        async with aio_channel(target) as anonymous:
            assert await _health(anonymous) == health_pb2.HealthCheckResponse.SERVING
            inference = pb_v2_grpc.GRPCInferenceServiceStub(anonymous)  # as /v2/health/*
            assert (await inference.ServerLive(pb_v2.ServerLiveRequest(), timeout=5)).live
            assert (await inference.ServerReady(pb_v2.ServerReadyRequest(), timeout=5)).ready
            assert set((await _every_guarded_rpc(anonymous)).values()) == {
                grpc.StatusCode.UNAUTHENTICATED}
        async with aio_channel(target, token="wrong-" + TOKEN) as impostor:
            assert set((await _every_guarded_rpc(impostor)).values()) == {
                grpc.StatusCode.UNAUTHENTICATED}
        async with aio_channel(target, token=TOKEN) as member:
            outcomes = await _every_guarded_rpc(member)
            assert not any(isinstance(o, grpc.StatusCode) for o in outcomes.values()), outcomes
            assert len(outcomes["Classify"].results) == 1
            assert "fashion_mnist.v1.Classifier" in outcomes["ServerReflectionInfo"]
    refusals = [r for r in caplog.records if r.getMessage() == "request failed"
                and r.fields["code"] == "UNAUTHENTICATED"]
    assert refusals and {r.levelname for r in refusals} == {"DEBUG"}


def test_health_watches_of_names_it_does_not_serve_leave_nothing_behind(model_repository,
                                                                        grpc_server):
    """grpc_health kept every name a Watch asked for, for good, and a Watch of a name it does
    not serve stayed open: without a token, one client grew the server by 2.8 GB in 8 s with
    600 names of 4 MB. Such a Watch now gets SERVICE_UNKNOWN and ends (no service is added
    later), registered nowhere. The native server kept the context of a Watch that its handler
    ended itself (as one opened while the server stops is)."""
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              grpc_server=grpc_server, auth_token=TOKEN)
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        health = health_pb2_grpc.HealthStub(channel)
        for index in range(50):
            answers = list(health.Watch(health_pb2.HealthCheckRequest(
                service=f"no-such-service-{index}-" + "x" * 10_000), timeout=5))
            assert [a.status for a in answers] == [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
        server.health.end_watches()  # as a stop does: a Watch opened after is answered, ended
        late = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert [a.status for a in late] == [health_pb2.HealthCheckResponse.SERVING]

        def kept() -> tuple[dict, int]:  # names with their Watches; the native server's own
            watches = server.health._send_response_callbacks
            return {name: len(sends) for name, sends in watches.items() if sends or name}, \
                len(getattr(server._server, "_watched", {}))

        deadline = time.monotonic() + 5
        while kept() != ({}, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kept() == ({}, 0)


@pytest.mark.parametrize("service", ["", "fashion_mnist.v1.Classifier",
                                     "inference.GRPCInferenceService"])
def test_the_services_are_known_not_serving_before_start(model_repository, grpc_server, service):
    """The transport serves calls before ``start()`` reports SERVING (the native server's
    threads take queued calls at once): a Watch of a service is NOT_SERVING then and stays
    open for the SERVING to come. The services were registered only then: such a Watch got
    SERVICE_UNKNOWN and ended, as for a name never served, and a Check NOT_FOUND."""
    server = ModelServer.from_settings(local_settings(model_repository=model_repository,
                                                      poll_interval=0, grpc_server=grpc_server))
    health_only = make_grpc_server(grpc_server, 2, [], 4096, reuse_port=False)
    health_pb2_grpc.add_HealthServicer_to_server(server.health, health_only)
    port = health_only.add_insecure_port("127.0.0.1:0")
    health_only.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            assert health.Check(request, timeout=5).status == NOT_SERVING
            watch = health.Watch(request, timeout=5)
            assert next(watch).status == NOT_SERVING
            server.start()
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        server.stop(0)
        health_only.stop(0).wait()


async def test_tls_serves_only_clients_that_trust_its_ca(pki, model_repository, grpc_server):
    async with _serving(model_repository, grpc_server, tls_cert=str(pki.server_cert),
                        tls_key=str(pki.server_key)) as port:
        target = f"localhost:{port}"
        async with aio_channel(target, tls_ca=pki.ca) as trusting:
            assert await _health(trusting) == health_pb2.HealthCheckResponse.SERVING
            outcomes = await _every_guarded_rpc(trusting)
            assert len(outcomes["Classify"].results) == 1
        for channel in (
            aio_channel(target),  # plaintext against a TLS port
            aio_channel(target, tls_ca=pki.rogue_ca),  # does not trust the server
        ):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await _health(channel)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(pki, model_repository,
                                                                          grpc_server):
    async with _serving(model_repository, grpc_server, tls_cert=str(pki.server_cert),
                        tls_key=str(pki.server_key), tls_client_ca=str(pki.ca),
                        auth_token=TOKEN) as port:
        target = f"127.0.0.1:{port}"
        good = {"tls_ca": pki.ca, "tls_cert": pki.client_cert, "tls_key": pki.client_key}
        async with aio_channel(target, token=TOKEN, **good) as member:
            assert await _health(member) == health_pb2.HealthCheckResponse.SERVING
            outcomes = await _every_guarded_rpc(member)
            assert len(outcomes["Classify"].results) == 1
        rogue = {"tls_cert": pki.rogue_client_cert, "tls_key": pki.rogue_client_key}
        for channel in (
            aio_channel(target, tls_ca=pki.ca),  # no client certificate
            aio_channel(target, tls_ca=pki.ca, **rogue),  # signed by another CA
        ):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await _health(channel)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_client_cli_speaks_mutual_tls_and_the_token(pki, model_repository, capsys,
                                                        monkeypatch, grpc_server):
    settings = local_settings(model_repository=model_repository,
                        parallel_inferences=1, poll_interval=0, tls_cert=str(pki.server_cert),
                        tls_key=str(pki.server_key), tls_client_ca=str(pki.ca),
                        auth_token=TOKEN, grpc_server=grpc_server)
    with running_server(settings) as server:
        common = ["--target", f"localhost:{server.port}", "--tls-ca", str(pki.ca),
                  "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        assert client_cli.main(["health", *common]) == 0  # health needs no token
        assert capsys.readouterr().out.strip() == "SERVING"
        assert client_cli.main(["models", *common]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert client_cli.main(["models", *common, "--token", TOKEN]) == 0
        assert "mlp" in capsys.readouterr().out
        monkeypatch.setenv("FMNIST_TOKEN", TOKEN)
        monkeypatch.setenv("FMNIST_TLS_CA", str(pki.ca))
        monkeypatch.setenv("FMNIST_TLS_CERT", str(pki.client_cert))
        monkeypatch.setenv("FMNIST_TLS_KEY", str(pki.client_key))
        assert client_cli.main(["models", "--target", f"localhost:{server.port}"]) == 0
        assert "mlp" in capsys.readouterr().out
        monkeypatch.delenv("FMNIST_TLS_CERT")
        monkeypatch.delenv("FMNIST_TLS_KEY")
        assert client_cli.main(["models", "--target", f"localhost:{server.port}"]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err  # no client certificate


def test_the_client_refuses_a_token_with_white_space_around_it(model_repository, capsys,
                                                               monkeypatch):
    """FMNIST_TOKEN from a Secret file keeps the file's last newline, which gRPC cannot send:
    every call failed "INTERNAL: Invalid metadata", as if the server were broken."""
    with running_server(local_settings(model_repository=model_repository)) as server:
        monkeypatch.setenv("FMNIST_TOKEN", TOKEN + "\n")
        with pytest.raises(SystemExit, match=r"^2$"):  # exit 2
            client_cli.main(["models", "--target", f"127.0.0.1:{server.port}"])
    assert capsys.readouterr().err == (
        "fmnist models: error: FMNIST_TOKEN: begins or ends with white space (a file's last "
        "newline?) or is other than printable ASCII: no gRPC or HTTP client can send it (see "
        "fmnist models --help)\n")


@pytest.mark.parametrize("token", [TOKEN + "\n", "pässwörd"])
def test_the_python_api_refuses_a_token_no_client_can_send(token):
    """`ChannelSecurity(token=open(path).read())` kept the file's last newline: every call
    failed "INTERNAL: Invalid metadata" under gRPC's C++ log lines, as if the server were
    broken, where fmnist refuses FMNIST_TOKEN's in one line (the same check, never the token)."""
    with pytest.raises(ValueError) as refused:
        client_security.ChannelSecurity(token=token)
    assert str(refused.value) == (
        "token: begins or ends with white space (a file's last newline?) or is other than "
        "printable ASCII: no gRPC or HTTP client can send it")


def test_the_client_checks_the_certificate_for_the_name_it_is_told(tmp_path, model_repository,
                                                                  capsys):
    """A port-forward to 127.0.0.1 reaches a server whose certificate names only its Service:
    the client had no way to check the certificate for that name, so TLS always failed."""
    from tests.pki import make_service_pki

    name = "fashion-mnist.fmnist.svc"
    ca, cert, key = make_service_pki(tmp_path, name)
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              tls_cert=str(cert), tls_key=str(key))
    with running_server(settings) as server:
        health = ["health", "--target", f"127.0.0.1:{server.port}", "--tls-ca", str(ca),
                  "--timeout", "5"]
        assert client_cli.main(health) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err
        assert client_cli.main([*health, "--tls-server-name", name]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        assert client_cli.main([*health, "--tls-server-name", "other.fmnist.svc"]) == 1


def test_the_token_is_not_in_the_settings_repr(model_repository):
    """... nor in the client's: ChannelSecurity's showed it (a program logging its settings)."""
    assert TOKEN not in repr(Settings(model_repository=model_repository, auth_token=TOKEN))
    assert TOKEN not in repr(client_security.ChannelSecurity(tls=True, token=TOKEN))


def test_client_certificate_without_key_is_refused(pki):
    with pytest.raises(ValueError, match="key"):
        client_security.channel_credentials(pki.ca, pki.client_cert, None)
