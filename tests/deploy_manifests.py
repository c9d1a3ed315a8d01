"""The manifests of deploy/ read as a cluster would read them, for tests/test_deploy_*.py.

``render`` is ``kubectl kustomize``; ``Workload`` is a container that runs the server (a
Deployment's, a KServe ServingRuntime's or a custom InferenceService predictor's) with what
its pod gives it; ``container_argv``, ``container_env`` and ``server_settings`` are what
kubelet would start and the settings the server would read, from the manifest and the serve
image's Dockerfile (its ENV and CMD). Starting such a container here is
tests/deploy_containers.py's job.
"""

import dataclasses
import functools
import hashlib
import json
import math
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from common.flags import env_var
from serving.settings import Settings, settings_from

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
KSERVE_CRDS = Path(__file__).resolve().parent / "data" / "kserve-crds"
IMAGE_COMPONENT = DEPLOY / "kubernetes" / "image" / "kustomization.yaml"
KSERVE_GROUP = "serving.kserve.io"
KUBECTL = shutil.which("kubectl")
# Every kustomization an operator applies (`kubectl apply -k`), relative to deploy/.
KUSTOMIZATIONS = (
    "kubernetes/base",
    "kubernetes/overlays/tls",
    "kubernetes/overlays/models-volume",
    "kserve",
)
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# The PATH of the Python base images (python:3.12-slim, Debian's), which ENV PATH extends.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed: the manifests are rendered with `kubectl kustomize` "
    "(kubectl >= 1.27, whose kustomize has components and labels; Debian 12's "
    "kubernetes-client, 1.20, is too old)",
)


@functools.cache
def _rendered(path: str) -> str:
    status = subprocess.run([KUBECTL, "kustomize", path], capture_output=True, text=True,
                            timeout=120, check=False)
    assert status.returncode == 0, f"kubectl kustomize {path} failed:\n{status.stderr}"
    return status.stdout


def render(kustomization: str | Path) -> list[dict]:
    """The objects ``kubectl kustomize`` renders for ``kustomization`` (relative to deploy/,
    or a path); a fresh copy each call."""
    path = kustomization if isinstance(kustomization, Path) else DEPLOY / kustomization
    return [item for item in yaml.safe_load_all(_rendered(str(path))) if item]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [item for item in objects if item["kind"] == kind
            and (name is None or item["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def load_yaml(path: Path) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as stream:
        return [item for item in yaml.load_all(stream, Loader=loader) if item]


# --- the serve image, as the Dockerfile builds it ---------------------------------------------


@dataclass(frozen=True)
class Image:
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    uid: int
    gid: int
    user: str  # its USER instruction


def _stage(name: str) -> list[str]:
    """The instructions of one Dockerfile stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(lines)
              if re.match(rf"FROM\s+\S+\s+AS\s+{name}$", line, re.IGNORECASE)]
    assert starts, f"no stage {name!r} in {DOCKERFILE}"
    stage = []
    for line in lines[starts[0] + 1:]:
        if line.upper().startswith("FROM "):
            break
        stage.append(line)
    return stage


@functools.cache
def serve_image() -> Image:
    env: dict[str, str] = {"PATH": BASE_PATH}
    entrypoint: list[str] = []
    cmd: list[str] = []
    uid, gid, user = None, None, ""
    for line in _stage("serve"):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        elif instruction == "CMD":
            cmd = json.loads(rest)
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "RUN" and "useradd" in rest:
            uid = int(re.search(r"--uid\s+(\d+)", rest).group(1))
            gid = int(re.search(r"useradd .*--gid\s+(\d+)", rest).group(1))
        elif instruction == "USER":
            user = rest.strip()
    assert uid is not None, "the serve stage creates no user"
    return Image(env, entrypoint, cmd, uid, gid, user)


def compose_image_name() -> str:
    """The serve image's name in docker-compose.yml, without its tag."""
    compose = load_yaml(COMPOSE)[0]
    return compose["services"]["classifier"]["image"].split(":")[0]


def image_component() -> dict:
    return load_yaml(IMAGE_COMPONENT)[0]


# --- containers that run the server --------------------------------------------------------


@dataclass
class Workload:
    """A container that runs the server, and what its pod gives it."""

    source: str  # e.g. "kubernetes/base Deployment/fashion-mnist"
    container: dict
    pod: dict  # pod-level fields: volumes, terminationGracePeriodSeconds, securityContext
    volumes: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        self.volumes = {volume["name"]: volume for volume in self.pod.get("volumes") or []}

    @property
    def termination_grace_s(self) -> int:
        return self.pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default

    @property
    def pre_stop_s(self) -> int:
        pre_stop = (self.container.get("lifecycle") or {}).get("preStop") or {}
        return (pre_stop.get("sleep") or {}).get("seconds", 0)

    def mounts(self) -> Iterator[tuple[dict, dict]]:
        """(volumeMount, its volume) of the container."""
        for mount in self.container.get("volumeMounts") or []:
            yield mount, self.volumes[mount["name"]]


def workloads(objects: list[dict], where: str = "") -> list[Workload]:
    """Every container that runs the server: Deployments', ServingRuntimes' (with the pod
    fields of the InferenceService that uses the runtime) and custom predictors'."""
    found = []
    for item in objects:
        name = f"{where} {item['kind']}/{item['metadata']['name']}".strip()
        if item["kind"] == "Deployment":
            pod = item["spec"]["template"]["spec"]
            found += [Workload(name, c, pod) for c in pod["containers"]]
        elif item["kind"] == "ServingRuntime":
            users = [isvc["spec"]["predictor"] for isvc in find(objects, "InferenceService")
                     if (isvc["spec"]["predictor"].get("model") or {}).get("runtime")
                     == item["metadata"]["name"]]
            pod = {key: value for key, value in (users[0] if users else {}).items()
                   if key not in ("model", "containers")}
            pod["volumes"] = item["spec"].get("volumes") or []
            found += [Workload(name, c, pod) for c in item["spec"]["containers"]]
        elif item["kind"] == "InferenceService" and item["spec"]["predictor"].get("containers"):
            pod = item["spec"]["predictor"]
            found += [Workload(name, c, pod) for c in pod["containers"]]
    return found


# --- what kubelet starts --------------------------------------------------------------------


def cpu_quantity(text: str | int | float) -> float:
    text = str(text)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def container_env(workload: Workload, secrets: Mapping[tuple[str, str], str] | None = None,
                  image: Image | None = None) -> dict[str, str]:
    """The container's environment: the image's ENV, then the container's ``env`` with
    ``valueFrom`` resolved as kubelet does (resourceFieldRef: the quantity divided by the
    divisor, rounded up; secretKeyRef: ``secrets[(secret, key)]``)."""
    env = dict((image or serve_image()).env)
    resources = workload.container.get("resources") or {}
    for item in workload.container.get("env") or []:
        name = item["name"]
        if "value" in item:
            assert "$(" not in str(item["value"]), f"{name}: $(VAR) references are not resolved"
            env[name] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref.get("containerName", workload.container["name"]) == \
                workload.container["name"], f"{name}: resourceFieldRef of another container"
            kind, _, resource = ref["resource"].partition(".")
            quantities = resources.get(kind) or {}
            assert resource in quantities, f"{name}: no {ref['resource']}"
            divisor = cpu_quantity(ref.get("divisor", "1"))
            env[name] = str(math.ceil(cpu_quantity(quantities[resource]) / divisor))
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = (secrets if secrets is not None else {})[(ref["name"], ref["key"])]
        else:
            raise AssertionError(f"{name}: unexpected valueFrom {source}")
    return env


def container_argv(workload: Workload, image: Image | None = None) -> list[str]:
    """command + args as the container runtime combines them with the image's ENTRYPOINT/CMD."""
    image = image or serve_image()
    command = workload.container.get("command")
    args = workload.container.get("args")
    if command:
        return [*command, *(args or [])]
    return [*image.entrypoint, *(args if args is not None else image.cmd)]


def server_settings(argv: list[str], env: Mapping[str, str]) -> dict[str, str]:
    """The settings the server would run with, each as text, from its own parser
    (``serving.settings.settings_from``: flags over FMNIST_* env vars over its defaults);
    AssertionError naming a value it refuses or an FMNIST_* variable it does not read, which
    it only warns of (FMNIST_DATA_DIR is read at run time: serving.cli)."""
    assert Path(argv[0]).name == "fmnist-serve", f"not the server: {argv}"
    names = [setting.name for setting in dataclasses.fields(Settings)]
    read = {env_var(name) for name in names} | {"FMNIST_DATA_DIR"}
    unread = sorted(name for name in env if name.startswith("FMNIST_") and name not in read)
    assert not unread, f"not settings of fmnist-serve: {unread}"
    try:
        settings = settings_from(argv[1:], env)
    except ValueError as error:
        raise AssertionError(f"fmnist-serve refuses: {error}") from None
    return {name: str(getattr(settings, name)) for name in names}


def probe_ports(workload: Workload) -> dict[str, int]:
    """The port of each of the container's probes; every one must be a gRPC probe."""
    ports = {}
    for probe in PROBES:
        if probe in workload.container:
            handler = workload.container[probe]
            assert "grpc" in handler, f"{workload.source} {probe}: not a grpc probe: {handler}"
            ports[probe] = handler["grpc"]["port"]
    return ports


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
