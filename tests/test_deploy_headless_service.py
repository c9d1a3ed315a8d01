"""The headless Service's clients: a DNS name of several pods' addresses, spread over by the
client's round_robin load-balancing policy, and the CLI's ``--target dns:///...`` and ``--lb``
(or FMNIST_LB), against stand-in servers that count their calls."""

import contextlib
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from serving.client import cli as client_cli
from serving.client.api import ClassifierClient
from tests.deploy_manifests import needs_kubectl

pytestmark = [needs_kubectl, pytest.mark.timeout(180)]


class _CountingClassifier(grpc.GenericRpcHandler):
    """Answers ListModels with no models, counting the calls."""

    def __init__(self):
        self.calls = 0

    def service(self, handler_call_details):
        if handler_call_details.method != "/fashion_mnist.v1.Classifier/ListModels":
            return None

        def list_models(_request: bytes, _context) -> bytes:
            self.calls += 1
            return b""  # an empty ListModelsResponse

        return grpc.unary_unary_rpc_method_handler(list_models)


@contextlib.contextmanager
def counting_servers(count: int):
    """``count`` stand-ins for pods behind a headless Service: (port, call counter) each."""
    servers, found = [], []
    try:
        for _ in range(count):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            counter = _CountingClassifier()
            server.add_generic_rpc_handlers((counter,))
            health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            servers.append(server)
            found.append((port, counter))
        yield found
    finally:
        for server in servers:
            server.stop(None)


def test_round_robin_spreads_the_clients_calls_over_every_address():
    """What a headless Service's DNS name gives a client: several addresses (here as an ipv4:
    target, with the same resolver result a dns:/// name of two pods has)."""
    with counting_servers(2) as pods:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in pods)
        calls = {}
        for policy in ("pick_first", "round_robin"):
            with ClassifierClient(target, timeout=10, lb_policy=policy) as client:
                # until the channel has connected (round_robin: to both, within 5 s)
                deadline = time.monotonic() + 5
                while True:
                    client.list_models()
                    reached = sum(counter.calls > 0 for _, counter in pods)
                    if reached == (2 if policy == "round_robin" else 1):
                        break
                    assert time.monotonic() < deadline, f"{policy}: reached {reached} pod"
                for _, counter in pods:
                    counter.calls = 0
                for _ in range(20):
                    client.list_models()
            calls[policy] = sorted(counter.calls for _, counter in pods)
            for _, counter in pods:
                counter.calls = 0
    assert calls == {"pick_first": [0, 20], "round_robin": [10, 10]}


def test_the_cli_takes_a_dns_target_and_the_lb_policy(monkeypatch, capsys):
    opened = []
    insecure_channel = grpc.insecure_channel

    def recording(target, options=None, *args, **kwargs):
        opened.append((target, dict(options or ())))
        return insecure_channel(target, options, *args, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", recording)
    with counting_servers(1) as [(port, counter)]:
        target = f"dns:///127.0.0.1:{port}"
        assert client_cli.main(["health", "--target", target, "--lb", "round_robin"]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        monkeypatch.setenv("FMNIST_LB", "round_robin")
        assert client_cli.main(["models", "--target", target]) == 0
        assert counter.calls == 1
    assert [(t, options["grpc.lb_policy_name"]) for t, options in opened] == [
        (target, "round_robin"), (target, "round_robin")]
    with pytest.raises(SystemExit) as refused:
        client_cli.main(["health", "--lb", "random"])
    assert refused.value.code == 2
