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

The health port's own contract is tested in tests/test_deploy_health_port.py, the headless
Service's clients in tests/test_deploy_headless_service.py.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from serving.client.api import ClassifierClient
from serving.client.security import ChannelSecurity
from tests.conftest import tiny_classifier
from tests.deploy_clients import IMAGES, TOKEN, check_classifies, client_security
from tests.deploy_containers import (
    Running,
    Started,
    descendants,
    health,
    run_container,
    sandbox_available,
    sandboxed_argv,
    wait_until_serving,
)
from tests.deploy_manifests import ROOT, Workload, needs_kubectl, one, render, workloads
from training.repository import write_version

pytestmark = [needs_kubectl, pytest.mark.timeout(180)]


# --- certificates and secrets -----------------------------------------------------------------


@pytest.fixture
def tls_secret(pki, tmp_path) -> Path:
    """The files of the Secret fashion-mnist-tls, as kubelet mounts them: one per key."""
    directory = tmp_path / "fashion-mnist-tls"
    directory.mkdir()
    for key, source in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key),
                        ("ca.crt", pki.ca)):
        (directory / key).write_bytes(source.read_bytes())
    return directory


# --- a container's life ----------------------------------------------------------------------


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
        # readiness fails while the call is in flight: NOT_SERVING, then, once the server has
        # stopped listening (GOAWAY, a moment later) while the call goes on, a refused
        # connection (UNAVAILABLE) or one cut as a worker stops (CANCELLED): not ready either
        while (status := health(readiness_port, readiness.get("service", ""))) == "SERVING":
            assert time.monotonic() - stopped_at < 10, f"still SERVING\n{running.log()}"
            time.sleep(0.1)
        assert status in ("NOT_SERVING", "UNAVAILABLE", "CANCELLED"), f"{status}\n{running.log()}"
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

    def answers_rest(running: Running, target: str) -> None:
        """The Open Inference Protocol's REST, KServe's v2, on the port its Service's port 80
        leads to (the first declared): the manifests had HTTP off, and declared gRPC alone."""
        rest_port = running.port(workload.container["ports"][0]["containerPort"])
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v2/models/mlp/ready",
                                    timeout=10) as answer:
            assert answer.status == 200

    with run_container(workload, paths, tmp_path) as running:
        serve_as_written(workload, running, while_serving=answers_rest)


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
    (the manifest's FMNIST_WORKERS from requests.cpu) or, with that variable removed, by the
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
