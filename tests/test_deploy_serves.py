"""The manifests' containers really serve as written.

Each server container of deploy/ (the Deployment of the base and of both overlays, the KServe
ServingRuntime and the packaged InferenceService) is started here the way kubelet would start
it: the command, args and env of the rendered YAML over the serve image's ENV (read from the
Dockerfile), ``valueFrom`` resolved (CPU limit, Secrets), the image's paths mapped to this
test's model repository, certificates and virtual environment, its ports to free local ports,
and, where this machine allows a private mount namespace, on a read-only root file system with
only its memory emptyDirs writable. Then kubelet's probes (a ``grpc.health.v1`` Check on the
probe's port) until SERVING, a classification with the real client, SIGTERM (kubelet sends it
after the preStop sleep), and the readiness probe failing while a call is still in flight,
before the process exits 0 within terminationGracePeriodSeconds less the preStop sleep.

The health port's own contract (FMNIST_HEALTH_PORT with TLS and a token on the main port) is
tested at the end, on a server started with flags.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from serving.client import cli as client_cli
from serving.client.api import ClassifierClient
from serving.security import ChannelSecurity
from tests.conftest import tiny_classifier
from tests.deploy_manifests import (
    ROOT,
    Started,
    Workload,
    free_port,
    needs_kubectl,
    one,
    prepare,
    probe_ports,
    render,
    sandbox_available,
    sandboxed_argv,
    workloads,
)
from tests.pki import Pki, make_pki
from training.repository import write_version

pytestmark = [needs_kubectl, pytest.mark.timeout(180)]

TOKEN = "deploy-test-token"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
IMAGES = np.random.default_rng(14).integers(0, 256, (8, 28, 28), dtype=np.uint8)
START_TIMEOUT_S = 60


# --- certificates and secrets -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_secret(pki, tmp_path) -> Path:
    """The files of the Secret fashion-mnist-tls, as kubelet mounts them: one per key."""
    directory = tmp_path / "fashion-mnist-tls"
    directory.mkdir()
    for key, source in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key),
                        ("ca.crt", pki.ca)):
        (directory / key).write_bytes(source.read_bytes())
    return directory


def client_security(pki: Pki) -> ChannelSecurity:
    return ChannelSecurity(tls=True, tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                           tls_key=str(pki.client_key), token=TOKEN)


# --- a container, started here ---------------------------------------------------------------


class Running:
    def __init__(self, process: subprocess.Popen, started: Started, log: Path):
        self.process = process
        self.started = started
        self._log = log

    def port(self, manifest_port: int) -> int:
        assert manifest_port in self.started.ports, \
            f"port {manifest_port} is none of the server's {sorted(self.started.ports)}"
        return self.started.ports[manifest_port]

    @property
    def main_port(self) -> int:
        return int(self.started.settings["port"])

    def log(self) -> str:
        lines = self._log.read_text(errors="replace").splitlines()
        return "\n".join(["--- server log (last 40 lines) ---", *lines[-40:]])

    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def run_container(workload: Workload, paths: dict[str, Path], log_dir: Path, *,
                  secrets: dict | None = None, env_overrides: dict | None = None,
                  cpus: set[int] | None = None):
    """Starts ``workload`` as kubelet would (see the module docstring); ``cpus`` restricts the
    process to these CPUs, as a CPU manager's cpuset would."""
    started = prepare(workload, paths, secrets, env_overrides)
    argv = (sandboxed_argv(started, list(paths.values())) if sandbox_available()
            else started.argv)
    if cpus:  # taskset executes the command in place: the same pid, the affinity inherited
        argv = ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus))), *argv]
    log = log_dir / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv, env=started.env, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            cwd="/")
    running = Running(process, started, log)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def health(port: int, service: str = "", timeout: float = 2.0) -> str:
    """What kubelet's gRPC probe sees: a Check on a new plaintext connection."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def wait_until_serving(running: Running, workload: Workload) -> None:
    """Each probe of the container, in kubelet's order, until it says SERVING."""
    for probe, manifest_port in probe_ports(workload).items():
        port = running.port(manifest_port)
        service = workload.container[probe]["grpc"].get("service", "")
        deadline = time.monotonic() + START_TIMEOUT_S
        while (status := health(port, service)) != "SERVING":
            assert running.alive(), f"exited {running.process.returncode}\n{running.log()}"
            assert time.monotonic() < deadline, f"{probe}: {status}\n{running.log()}"
            time.sleep(0.2)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def check_classifies(target: str, security: ChannelSecurity | None = None) -> None:
    with ClassifierClient(target, timeout=30, security=security) as client:
        answer = client.classify(IMAGES)
    assert len(answer) == len(IMAGES)
    assert answer.model.name == "mlp" and answer.baseline.name == "baseline"
    np.testing.assert_allclose(answer.model.probabilities.sum(axis=1), 1, rtol=1e-4)
    assert (answer.model.labels == answer.model.probabilities.argmax(axis=1)).all()


def serve_as_written(workload: Workload, running: Running,
                     security: ChannelSecurity | None = None, while_serving=None) -> None:
    """Probes until SERVING, classifies, then stops the pod as kubelet does and checks the
    drain: readiness fails while a call is in flight, the call finishes, the process exits 0
    in time."""
    wait_until_serving(running, workload)
    target = f"127.0.0.1:{running.main_port}"
    check_classifies(target, security)
    if while_serving:
        while_serving(running, target)

    readiness = workload.container["readinessProbe"]["grpc"]
    readiness_port = running.port(readiness["port"])
    release = threading.Event()

    def batches():
        yield IMAGES[:4]
        release.wait(30)
        yield IMAGES[4:]

    with ClassifierClient(target, timeout=30, security=security) as client:
        stream = client.classify_batches(batches(), timeout=60)
        assert len(next(stream)) == 4  # a call in flight
        stopped_at = time.monotonic()
        running.process.send_signal(signal.SIGTERM)  # after preStop, which we do not wait for
        while (status := health(readiness_port, readiness.get("service", ""))) == "SERVING":
            assert time.monotonic() - stopped_at < 10, f"still SERVING\n{running.log()}"
            time.sleep(0.1)
        # an answer, not a refused connection: the server says NOT_SERVING first
        assert status == "NOT_SERVING", f"{status}\n{running.log()}"
        assert running.alive(), "readiness must fail before the process exits"
        release.set()
        assert [len(answer) for answer in stream] == [4]  # the call in flight finished
    budget_s = workload.termination_grace_s - workload.pre_stop_s
    try:
        returncode = running.process.wait(budget_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {budget_s} s after SIGTERM: kubelet would kill it\n"
                    f"{running.log()}")
    assert returncode == 0, running.log()
    assert time.monotonic() - stopped_at < budget_s


def deployment(kustomization: str | Path) -> Workload:
    [workload] = workloads([one(render(kustomization), "Deployment")], str(kustomization))
    return workload


def cpus_here() -> set[int]:
    return os.sched_getaffinity(0)


# --- the manifests' containers ---------------------------------------------------------------


def test_the_base_deployment_serves_as_written(model_repository, tmp_path):
    workload = deployment("kubernetes/base")
    with run_container(workload, {"/models": model_repository}, tmp_path) as running:
        wait_until_serving(running, workload)
        # FMNIST_WORKERS is the CPU limit (2): a worker process each (and a supervisor)
        deadline = time.monotonic() + 20
        while len(descendants(running.process.pid)) < 2:
            assert time.monotonic() < deadline, f"fewer than 2 workers\n{running.log()}"
            time.sleep(0.2)
        serve_as_written(workload, running)


def test_the_tls_overlay_serves_as_written(model_repository, tls_secret, pki, tmp_path):
    workload = deployment("kubernetes/overlays/tls")
    paths = {"/models": model_repository, "/etc/fmnist/tls": tls_secret}
    secrets = {("fashion-mnist-token", "token"): TOKEN}
    with run_container(workload, paths, tmp_path, secrets=secrets) as running:
        wait_until_serving(running, workload)  # on the health port, without credentials
        assert health(running.main_port) == "UNAVAILABLE"  # the main port speaks TLS only
        serve_as_written(workload, running, client_security(pki))


def test_the_models_volume_overlay_serves_and_follows_a_published_version(repository_copy,
                                                                          tmp_path):
    workload = deployment("kubernetes/overlays/models-volume")

    def publish(running: Running, target: str) -> None:
        # what README's rollout does: the version's directory written under a hidden name,
        # then renamed into place (training.repository.write_version)
        version = int(write_version(repository_copy, "mlp", tiny_classifier(9),
                                    {"description": "published while serving"}).name)
        poll_s = float(running.started.settings["poll_interval"])
        deadline = time.monotonic() + 2 * poll_s + 10
        with ClassifierClient(target, timeout=30) as client:
            while client.classify(IMAGES).model.version != version:
                assert time.monotonic() < deadline, f"v{version} not served\n{running.log()}"
                time.sleep(0.2)

    with run_container(workload, {"/mnt/models": repository_copy}, tmp_path) as running:
        serve_as_written(workload, running, while_serving=publish)


@pytest.mark.parametrize("source", ["ServingRuntime/fashion-mnist",
                                    "InferenceService/fashion-mnist-packaged"])
def test_the_kserve_containers_serve_as_written(source, model_repository, tmp_path):
    [workload] = [w for w in workloads(render("kserve")) if w.source == source]
    # KServe mounts the storageUri's repository at /mnt/models; the image has its own at /models
    paths = {"/mnt/models": model_repository, "/models": tmp_path / "no-such-repository"}
    if source.startswith("InferenceService"):
        paths = {"/models": model_repository}
    with run_container(workload, paths, tmp_path) as running:
        serve_as_written(workload, running)


def _cpu_limit_overlay(directory: Path, cpus: str) -> Path:
    """An operator's overlay of the base that sets the CPU request and limit to ``cpus``."""
    directory.mkdir()
    base = os.path.relpath(ROOT / "deploy" / "kubernetes" / "base", directory)  # no absolute
    (directory / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
patches:
  - target:
      kind: Deployment
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/resources/limits/cpu
        value: "{cpus}"
      - op: replace
        path: /spec/template/spec/containers/0/resources/requests/cpu
        value: "{cpus}"
""")
    return directory


@pytest.mark.parametrize("limited_by", ["the CPU limit", "the CPUs it may run on"])
def test_a_container_limited_to_fewer_cpus_than_the_node_runs_that_many_workers(
        limited_by, model_repository, tmp_path):
    """The node (this machine) has 2 or more cores; the container gets 1 CPU, by its limit
    (the manifest's FMNIST_WORKERS from limits.cpu) or, with that variable removed, by the
    CPUs it may run on (a CPU manager's cpuset: the server sizes itself): one process serves."""
    if len(cpus_here()) < 2:
        pytest.skip("needs a machine with 2 or more CPUs to give the container fewer")
    if limited_by == "the CPU limit":
        workload = deployment(_cpu_limit_overlay(tmp_path / "overlay", "1"))
        options = {}
    else:
        workload = deployment("kubernetes/base")
        options = {"env_overrides": {"FMNIST_WORKERS": None}, "cpus": {min(cpus_here())}}
    with run_container(workload, {"/models": model_repository}, tmp_path, **options) as running:
        wait_until_serving(running, workload)
        assert descendants(running.process.pid) == [], "more than one server process"
        check_classifies(f"127.0.0.1:{running.main_port}")
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0, running.log()


def test_the_sandbox_root_is_read_only(tmp_path):
    """What the tests above run on: a container's view with readOnlyRootFilesystem."""
    if not sandbox_available():
        pytest.skip("no private mount namespace here (needs root and unshare): the "
                    "containers above ran on a writable root")
    written = tmp_path / "written"
    script = (
        "import sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open(path, 'w').close(); print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('refused', path, error.errno)\n"
    )
    started = Started([sys.executable, "-c", script, str(written), str(ROOT / "written"),
                       "/dev/shm/fmnist-deploy-test", "/tmp/fmnist-deploy-test"],
                      {"PATH": "/usr/bin:/bin"}, {}, {}, ["/tmp"])
    try:
        output = subprocess.run(sandboxed_argv(started, [tmp_path]), capture_output=True,
                                text=True, timeout=60, check=True).stdout.split("\n")
    finally:
        Path("/dev/shm/fmnist-deploy-test").unlink(missing_ok=True)
    assert output[:2] == [f"refused {written} 30", f"refused {ROOT / 'written'} 30"]  # EROFS
    assert output[2] == "wrote /dev/shm/fmnist-deploy-test"
    # an emptyDir gets a fresh tmpfs, unless it would hide the test's files: then it stays
    # read-only
    hidden = any(str(path).startswith("/tmp/")
                 for path in (tmp_path, ROOT, Path(sys.prefix), Path.cwd()))
    assert output[3].startswith("refused" if hidden else "wrote")
    assert "/tmp/fmnist-deploy-test" in output[3]
    assert not written.exists() and not (ROOT / "written").exists()


# --- the health port -------------------------------------------------------------------------


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
    port, health_port = free_port(), free_port()
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


# --- the headless Service's clients ----------------------------------------------------------


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
