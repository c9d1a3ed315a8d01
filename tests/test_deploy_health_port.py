"""The health port's own contract, on a server started with flags: FMNIST_HEALTH_PORT (here
``--health-port``) answers kubelet's gRPC probes without credentials while the main port takes
mutual TLS and a token, serves nothing but health, and says NOT_SERVING on SIGTERM before the
main port refuses a call."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.client.api import ClassifierClient
from serving.client.security import ChannelSecurity
from tests.conftest import held_port
from tests.deploy_clients import IMAGES, TOKEN, check_classifies, client_security
from tests.deploy_containers import START_TIMEOUT_S, health
from tests.deploy_manifests import needs_kubectl

pytestmark = [needs_kubectl, pytest.mark.timeout(180)]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _unimplemented(channel: grpc.Channel) -> dict[str, str]:
    """The status of a call to each service but health, with empty requests."""
    codes = {}
    for method in ("/fashion_mnist.v1.Classifier/ListModels",
                   "/inference.GRPCInferenceService/ServerLive",
                   "/inference.GRPCInferenceService/ModelInfer"):
        try:
            channel.unary_unary(method)(b"", timeout=5)
            codes[method] = "OK"
        except grpc.RpcError as error:
            codes[method] = error.code().name
    for method in ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                   "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"):
        try:
            list(channel.stream_stream(method)(iter([b""]), timeout=5))
            codes[method] = "OK"
        except grpc.RpcError as error:
            codes[method] = error.code().name
    return codes


def test_the_health_port_answers_probes_without_credentials_and_nothing_else(
        pki, model_repository, tmp_path):
    port, health_port = held_port(), held_port()
    executable = Path(sys.executable).parent / "fmnist-serve"
    env = {**os.environ, "FMNIST_AUTH_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(executable), "--model-repository", str(model_repository), "--host",
             "127.0.0.1", "--port", str(port), "--health-port", str(health_port),
             "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
             "--tls-client-ca", str(pki.ca), "--grace-period", "10", "--workers", "1"],
            env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output)

    def server_log() -> str:
        return log.read_text(errors="replace")

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while health(health_port) != "SERVING":
            assert process.poll() is None, server_log()
            assert time.monotonic() < deadline, server_log()
            time.sleep(0.2)
        # the same status as the main port, for the whole server and for the classifier
        assert health(health_port, "fashion_mnist.v1.Classifier") == "SERVING"
        assert health(health_port, "no.such.Service") == "NOT_FOUND"
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            assert set(_unimplemented(channel).values()) == {"UNIMPLEMENTED"}

        # the main port: TLS only, every call but health needs the token
        assert health(port) == "UNAVAILABLE"
        target = f"127.0.0.1:{port}"
        no_token = ChannelSecurity(tls=True, tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                                   tls_key=str(pki.client_key))
        with ClassifierClient(target, timeout=10, security=no_token) as client, \
                pytest.raises(grpc.RpcError) as refused:
            client.list_models()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        check_classifies(target, client_security(pki))

        # SIGTERM: the health port says NOT_SERVING before the main port refuses a call
        events: dict[str, float] = {}
        channel = grpc.insecure_channel(f"127.0.0.1:{health_port}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == SERVING

        def watching():
            for answer in watch:
                if answer.status == NOT_SERVING:
                    events["not serving"] = time.monotonic()
                    return

        def calling():
            with ClassifierClient(target, timeout=10, security=client_security(pki)) as client:
                while time.monotonic() < calls_until:
                    try:
                        client.classify(IMAGES[:1])
                    except grpc.RpcError as error:
                        events["refused"] = time.monotonic()
                        events["refused with"] = error.code().name
                        return

        threads = [threading.Thread(target=watching), threading.Thread(target=calling)]
        calls_until = time.monotonic() + 20
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # calls are being answered
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        watch.cancel()
        channel.close()
        assert "not serving" in events, f"{events}\n{server_log()}"
        assert events.get("refused with") == "UNAVAILABLE", f"{events}\n{server_log()}"
        assert events["not serving"] < events["refused"]
        assert process.wait(30) == 0, server_log()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
