"""The deployments locked down, on the objects ``kubectl kustomize`` renders and in compose:
the containers' security context (non-root by number, no capability, nothing written but to
memory) and the NetworkPolicy. The other facts are tests/test_deploy_manifest_facts.py's."""

import json
import re

import pytest

from serving.settings import Settings
from tests.deploy_manifests import (
    COMPOSE,
    DEPLOY,
    KUSTOMIZATIONS,
    Workload,
    container_argv,
    container_env,
    find,
    load_yaml,
    needs_kubectl,
    one,
    render,
    serve_image,
    server_settings,
    workloads,
)
from tests.deploy_manifests import _stage as dockerfile_stage
from tests.test_deploy_kserve import kserve_injects_agent, kserve_service_ports

pytestmark = needs_kubectl

KUBERNETES = [k for k in KUSTOMIZATIONS if k.startswith("kubernetes/")]


def security_context(workload: Workload) -> dict:
    """The container's effective security context: its own over the pod's."""
    pod = {key: value for key, value in (workload.pod.get("securityContext") or {}).items()
           if key in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")}
    return {**pod, **(workload.container.get("securityContext") or {})}


def test_compose_runs_the_image_locked_down_too():
    """As the Kubernetes manifests do: no capability, no privilege gained through a setuid
    program of the base image, nothing written but to memory."""
    services = load_yaml(COMPOSE)[0]["services"]
    for name in ("classifier", "score"):
        assert services[name]["read_only"] is True, name
        assert services[name]["cap_drop"] == ["ALL"], name
        assert services[name]["security_opt"] == ["no-new-privileges"], name


def test_the_load_balancer_runs_locked_down_and_bounds_what_it_buffers():
    """The compose `lb` profile's nginx ran as root with a default container's capabilities on
    a writable root file system, and took HTTP request bodies of any size
    (client_max_body_size 0), buffering each whole to its disk before the server refused it
    past 4 MiB. Now: as the Debian image's www-data, no capability, read-only but for a
    bounded tmpfs where its pid file and buffers go, and the server's own limit on a body."""
    lb = load_yaml(COMPOSE)[0]["services"]["lb"]
    assert lb["read_only"] is True and lb["cap_drop"] == ["ALL"] and not lb.get("cap_add")
    assert lb["security_opt"] == ["no-new-privileges"]
    stage = dockerfile_stage("lb")
    users = [line.split(None, 1)[1] for line in stage if line.upper().startswith("USER ")]
    assert users and users[-1].partition(":")[0] not in ("root", "0")
    tmpfs = dict(entry.split(":", 1) for entry in lb["tmpfs"])
    assert all(re.search(r"(^|,)size=\d+[kmg]?($|,)", options) for options in tmpfs.values())
    conf = (DEPLOY / "nginx-grpc-lb.conf").read_text()
    written = re.findall(r"^\s*(?:pid|\w+_temp_path)\s+(\S+);", conf, re.MULTILINE)
    assert len(written) == 6  # the pid file; the body, proxy, fastcgi, uwsgi and scgi buffers
    # ... and the upstreams its entry point writes (nginx-lb.sh), which nginx includes
    entry = (DEPLOY / "nginx-lb.sh").read_text()
    written.append(re.search(r"^UPSTREAMS=(\S+)$", entry, re.MULTILINE)[1])
    assert f"include {written[-1]};" in conf
    assert all(any(path.startswith(mount + "/") for mount in tmpfs) for path in written)
    cmd = json.loads(next(line for line in reversed(stage) if line.startswith("CMD "))[4:])
    assert cmd == ["nginx-lb.sh"]
    assert re.search(r"^nginx -e stderr ", entry, re.MULTILINE)  # the default log is root's
    http = re.search(r"server \{\s*listen 8080;(.*?)\n    \}", conf, re.DOTALL).group(1)
    limit = re.search(r"client_max_body_size (\d+)([km]?);", http)
    assert int(limit[1]) * {"": 1, "k": 1024, "m": 1024**2}[limit[2]] == \
        Settings().max_message_bytes


def test_the_image_runs_as_a_number_kubelet_can_check():
    """USER fmnist (a name) made kubelet refuse the pod under runAsNonRoot unless the manifest
    also gave runAsUser: it cannot tell that a name is not root."""
    image = serve_image()
    assert image.user == f"{image.uid}:{image.gid}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_containers_run_locked_down_and_write_only_to_memory(kustomization):
    uid = serve_image().uid
    for workload in workloads(render(kustomization), kustomization):
        context = security_context(workload)
        assert context["runAsNonRoot"] is True, workload.source
        assert context["runAsUser"] == uid, workload.source
        assert context["runAsGroup"] == serve_image().gid, workload.source  # its files' group
        assert context["readOnlyRootFilesystem"] is True, workload.source
        assert context["allowPrivilegeEscalation"] is False, workload.source
        assert context["capabilities"] == {"drop": ["ALL"]}, workload.source
        assert context.get("privileged") in (None, False)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, workload.source
        assert workload.pod.get("automountServiceAccountToken") is False, workload.source
        # a Service named fmnist-http would set FMNIST_HTTP_PORT=tcp://...: no start
        assert workload.pod.get("enableServiceLinks") is False, workload.source
        memory = {}
        for mount, volume in workload.mounts():
            if "emptyDir" in volume:
                memory[mount["mountPath"]] = volume["emptyDir"]
            else:  # secrets, the model repository: never written
                assert mount.get("readOnly") is True, f"{workload.source} {mount}"
        assert set(memory) == {"/dev/shm", "/tmp"}, workload.source
        for empty_dir in memory.values():
            assert empty_dir["medium"] == "Memory" and empty_dir["sizeLimit"]


@pytest.mark.parametrize("kustomization", KUBERNETES)
def test_the_network_policy_admits_what_services_lead_to_and_denies_all_egress(kustomization):
    """Clients and Prometheus reach the pods on the ports the Services lead to; the server
    opens no connection, so a compromised pod may open none either. A port the policy left
    out would cut its clients off; a selector matching no pod, or every pod of the
    namespace, would guard nothing, or deny every other workload's egress."""
    objects = render(kustomization)
    policy = one(objects, "NetworkPolicy")["spec"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = policy["podSelector"].get("matchLabels")
    assert selector and selector.items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and not policy.get("egress")
    admitted = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    led_to = {port["targetPort"] for service in find(objects, "Service")
              for port in service["spec"]["ports"]}
    assert led_to == admitted == {"grpc", "http", "metrics"}
    assert all("from" not in rule for rule in policy["ingress"])  # any client, as the Service


def _selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects a pod of ``labels``."""
    tests = {"In": lambda key, values: labels.get(key) in values,
             "NotIn": lambda key, values: labels.get(key) not in values,
             "Exists": lambda key, _: key in labels,
             "DoesNotExist": lambda key, _: key not in labels}
    return (selector.get("matchLabels", {}).items() <= labels.items()
            and all(tests[rule["operator"]](rule["key"], rule.get("values", []))
                    for rule in selector.get("matchExpressions", [])))


def test_the_kserve_predictors_are_fenced_in_as_the_deployments_are():
    """deploy/kserve had no NetworkPolicy: its predictor pods, the same server as the
    Deployment's, could open connections anywhere in the cluster or outside, which the
    Deployment's policy denies. KServe labels each predictor pod with its InferenceService's
    name and its component; the policy takes the server's ports, REST, gRPC and metrics, and denies
    all egress (the server calls nothing; a pvc:// repository is a mount)."""
    objects = render("kserve")
    policies = find(objects, "NetworkPolicy")
    served = {w.source: w for w in workloads(objects)}
    for isvc in find(objects, "InferenceService"):
        name = isvc["metadata"]["name"]
        runtime = (isvc["spec"]["predictor"].get("model") or {}).get("runtime")
        workload = served[f"ServingRuntime/{runtime}" if runtime else f"InferenceService/{name}"]
        settings = server_settings(container_argv(workload), container_env(workload))
        predictor = {"serving.kserve.io/inferenceservice": name, "component": "predictor"}
        fencing = [p["spec"] for p in policies if _selects(p["spec"]["podSelector"], predictor)]
        assert len(fencing) == 1, name
        policy = fencing[0]
        # not another component's pods (a transformer's, an explainer's), nor another service's
        assert not _selects(policy["podSelector"], {**predictor, "component": "transformer"})
        assert not _selects(policy["podSelector"], {**predictor,
                                                    "serving.kserve.io/inferenceservice": "x"})
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and not policy.get("egress")
        admitted = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
        assert admitted == {int(settings["port"]), int(settings["http_port"]),
                            int(settings["metrics_port"])}, name


def _kserve_fence_problems(objects: list[dict]) -> list[str]:
    """What KServe's Service or agent sidecar would need of a predictor pod that its
    NetworkPolicy or its probes do not give: a port the Service leads to that the policy drops,
    or an agent (kserve_injects_agent) beside a server whose readiness probe it cannot take
    over: it takes an httpGet or tcpSocket probe (SERVING_READINESS_PROBE, which
    agent_injector.go sets for those only) and, without one, exits as it starts
    (cmd/agent/main.go: a required setting), so the pod never gets ready."""
    policies = find(objects, "NetworkPolicy")
    served = {w.source: w for w in workloads(objects)}
    problems = []
    for isvc in find(objects, "InferenceService"):
        name, predictor = isvc["metadata"]["name"], isvc["spec"]["predictor"]
        runtime = (predictor.get("model") or {}).get("runtime")
        workload = served[f"ServingRuntime/{runtime}" if runtime else f"InferenceService/{name}"]
        labels = {"serving.kserve.io/inferenceservice": name, "component": "predictor"}
        admitted = {port["port"] for policy in policies
                    if _selects(policy["spec"]["podSelector"], labels)
                    for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        problems += [f"{name}: KServe's Service leads to {port['targetPort']}, not admitted"
                     for port in kserve_service_ports(workload)
                     if port["targetPort"] not in admitted]
        if kserve_injects_agent(predictor) and not {"httpGet", "tcpSocket"} & set(
                workload.container["readinessProbe"]):
            problems.append(f"{name}: KServe's agent cannot take over a gRPC readiness probe")
    return problems


def test_no_kserve_agent_is_added_whose_port_the_policy_drops():
    """KServe's Service leads port 80 to the server's REST port; for a predictor with a batcher
    or a logger, to its agent sidecar's port, 9081, which the policy does not admit, and that
    agent exits at start beside the server's gRPC probes. No queue-proxy either: RawDeployment
    is Standard mode, no Knative. The manifests add no agent (no batcher, no logger, a
    storageUri or the packaged models): nothing KServe adds is cut off. The check is not
    vacuous: each predictor given a logger fails it twice."""
    objects = render("kserve")
    assert _kserve_fence_problems(objects) == []
    for isvc in find(objects, "InferenceService"):
        isvc["spec"]["predictor"]["logger"] = {"mode": "all", "url": "http://sink.example"}
    problems = _kserve_fence_problems(objects)
    assert len(problems) == 4 and sum("9081" in problem for problem in problems) == 2, problems
