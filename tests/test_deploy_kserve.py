"""deploy/kserve read as KServe reads it: the facts of tests/test_deploy_manifest_facts.py
that are KServe's own (deployment mode, autoscaling, disruption budgets, runtime and predictor
containers) and the Service and routes KServe builds from the predictor's ports.
"""

import math
import re

from tests.deploy_manifests import (
    Workload,
    container_argv,
    find,
    needs_kubectl,
    one,
    render,
    serve_image,
    workloads,
)
from tests.test_deploy_manifest_facts import KUBERNETES, settings_of

pytestmark = needs_kubectl
AGENT_PORT = 9081  # KServe's agent sidecar (InferenceServiceDefaultAgentPort, constants.go)


def _kserve_deployment_mode(annotation: str, kserve: str) -> str:
    """The mode KServe gives an InferenceService annotated serving.kserve.io/deploymentMode
    (GetDeploymentMode, pkg/controller/v1beta1/inferenceservice/utils/utils.go): up to 0.15 it
    reads RawDeployment, Serverless and ModelMesh, and any other value leaves the cluster's
    default (Serverless, Knative, on a stock install): "Standard" there deployed on Knative,
    which serves one port. From 0.16 RawDeployment and Serverless are read as Standard and
    Knative."""
    if kserve <= "0.15":
        known = {"RawDeployment", "Serverless", "ModelMesh"}
        return annotation if annotation in known else "Serverless"
    legacy = {"RawDeployment": "Standard", "Serverless": "Knative"}
    annotation = legacy.get(annotation, annotation)
    return annotation if annotation in {"Standard", "Knative", "ModelMesh"} else "Standard"


def test_the_kserve_manifests_use_kserves_conventions():
    objects = render("kserve")
    runtime = one(objects, "ServingRuntime")
    assert {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]} == {"onnx"}
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]  # REST and gRPC

    isvc = one(objects, "InferenceService", "fashion-mnist")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    claim = re.fullmatch(r"pvc://([^/]+)/.*", model["storageUri"])
    assert claim and one(objects, "PersistentVolumeClaim", claim.group(1))
    # its own: `kubectl delete -k` of one kustomization deleted the other's models
    others = {item["metadata"]["name"] for kustomization in KUBERNETES
              for item in find(render(kustomization), "PersistentVolumeClaim")}
    assert claim.group(1) not in others
    for item in find(objects, "InferenceService"):
        # raw Deployments on every KServe from 0.11 (see _kserve_deployment_mode)
        mode = item["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        assert _kserve_deployment_mode(mode, "0.15") == "RawDeployment", mode
        assert _kserve_deployment_mode(mode, "0.16") == "Standard", mode
        assert item["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
        # what KServe's HPA reads (an annotation serving.kserve.io/metrics is not read)
        assert item["spec"]["predictor"]["scaleMetric"] == "cpu"
        assert item["spec"]["predictor"]["scaleTarget"] == 70
        assert not {"serving.kserve.io/metrics", "serving.kserve.io/targetUtilizationPercentage"
                    } & set(item["metadata"]["annotations"])
        # "true" makes KServe point prometheus.io/port at Knative's queue-proxy
        assert item["metadata"]["annotations"][
            "serving.kserve.io/enable-prometheus-scraping"] == "false"

    # a node drain takes one predictor pod of each at a time (KServe labels its pods so)
    budgets = find(objects, "PodDisruptionBudget")
    for item in find(objects, "InferenceService"):
        guarding = [budget["spec"] for budget in budgets
                    if budget["spec"]["selector"]["matchLabels"] == {
                        "serving.kserve.io/inferenceservice": item["metadata"]["name"],
                        "component": "predictor"}]
        assert len(guarding) == 1, item["metadata"]["name"]
        assert guarding[0]["maxUnavailable"] < item["spec"]["predictor"]["minReplicas"]
        assert guarding[0]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"

    by_source = {w.source.split()[0]: w for w in workloads(objects)}
    assert set(by_source) == {"ServingRuntime/fashion-mnist",
                              "InferenceService/fashion-mnist-packaged"}
    for source, workload in by_source.items():
        settings = settings_of(workload)
        assert workload.container["name"] == "kserve-container"
        assert [(p["name"], p["containerPort"]) for p in workload.container["ports"]] == [
            ("http1", int(settings["http_port"])), ("h2c", int(settings["port"]))], source
        # pod annotations: the runtime's, or the custom predictor's
        pod_annotations = (runtime["spec"] if source.startswith("ServingRuntime")
                           else workload.pod)["annotations"]
        assert pod_annotations["prometheus.io/scrape"] == "true"
        assert pod_annotations["prometheus.io/port"] == settings["metrics_port"]
        assert pod_annotations["prometheus.io/path"] == "/metrics"
    # KServe's mount point, from a flag that wins over the image's env; the packaged models
    # are where the image put them
    assert "/mnt/models" in container_argv(by_source["ServingRuntime/fashion-mnist"])
    assert settings_of(by_source["ServingRuntime/fashion-mnist"])["model_repository"] == \
        "/mnt/models"
    packaged = by_source["InferenceService/fashion-mnist-packaged"]
    assert settings_of(packaged)["model_repository"] == \
        serve_image().env["FMNIST_MODEL_REPOSITORY"]


def kserve_service_ports(workload: Workload) -> list[dict]:
    """The ports of the Service KServe makes for a predictor in Standard mode, from its
    container's ports (createDefaultSvc, pkg/controller/v1beta1/inferenceservice/reconcilers/
    service/service_reconciler.go, v0.11 to master of 2026-08-21): the first becomes port 80,
    each other keeps its number; a name holding "grpc" or "h2c" gets appProtocol
    kubernetes.io/h2c (v0.15+). A predictor with a batcher or a logger has port 80 lead to
    KServe's agent sidecar instead, AGENT_PORT."""
    ports = [{"name": port["name"], "port": 80 if index == 0 else port["containerPort"],
              "targetPort": port["containerPort"],
              "grpc": "grpc" in port["name"] or "h2c" in port["name"]}
             for index, port in enumerate(workload.container["ports"])]
    if workload.pod.get("batcher") or workload.pod.get("logger"):
        ports[0]["targetPort"] = AGENT_PORT
    return ports


def kserve_injects_agent(predictor: dict) -> bool:
    """Whether KServe's pod webhook adds its agent sidecar to the predictor's pods (InjectAgent,
    pkg/webhook/admission/pod/agent_injector.go, v0.14 to master): for a batcher, a logger, or
    a multi-model predictor (IsMMSPredictor: a custom container with MULTI_MODEL_SERVER=true,
    or a model with no storageUri, storage nor storageUris)."""
    if predictor.get("batcher") or predictor.get("logger"):
        return True
    if predictor.get("containers"):
        return {"name": "MULTI_MODEL_SERVER", "value": "true"} in (
            predictor["containers"][0].get("env") or [])
    model = predictor.get("model") or {}
    return not (model.get("storageUri") or model.get("storage") or predictor.get("storageUris"))


def test_kserves_service_and_routes_reach_the_servers_rest_and_grpc_ports():
    """KServe's Ingress and the InferenceService's URL lead to its Service's port 80, and its
    Gateway API route (v0.19+, detectServiceProtocolPorts) sends the Open Inference Protocol's
    gRPC calls to the first gRPC port and everything else (REST's /v2/...) to the first other
    port. The manifests declared the gRPC port alone and turned HTTP off ("KServe's Service
    leads to that one port", which it does not since v0.11): no REST request through KServe
    reached the server, and HTTP/1.1 went to the gRPC port."""
    for workload in workloads(render("kserve")):
        settings = settings_of(workload)
        service = kserve_service_ports(workload)
        rest = [port for port in service if not port["grpc"]]
        grpc = [port for port in service if port["grpc"]]
        assert rest and rest[0]["port"] == 80, workload.source
        assert rest[0]["targetPort"] == int(settings["http_port"]) != 0, \
            workload.source
        assert grpc and grpc[0]["targetPort"] == int(settings["port"]), workload.source
        assert len({port["port"] for port in service}) == len(service), workload.source


def _predictor_labels(isvc: dict) -> dict:
    """The labels KServe gives every predictor pod of ``isvc`` (among others)."""
    return {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
            "component": "predictor"}


def test_the_predictors_spread_over_nodes_as_the_deployments_do():
    """The Deployment spreads its replicas over nodes; KServe's Deployments had no spread, so
    the scheduler could put every predictor pod of an InferenceService on one node, and that
    node's loss took them all."""
    objects = render("kserve")
    for isvc in find(objects, "InferenceService"):
        name, labels = isvc["metadata"]["name"], _predictor_labels(isvc)
        spreads = isvc["spec"]["predictor"].get("topologySpreadConstraints") or []
        by_node = [spread for spread in spreads
                   if spread["topologyKey"] == "kubernetes.io/hostname"]
        assert len(by_node) == 1, name
        selector = by_node[0]["labelSelector"]["matchLabels"]
        assert selector == labels, name  # its own predictor's pods, not the other's
        assert by_node[0]["maxSkew"] == 1, name
        # a cluster of one node still schedules them
        assert by_node[0]["whenUnsatisfiable"] == "ScheduleAnyway", name


def _rollout_allowance(value: int | str, replicas: int, round_up: bool) -> int:
    """A RollingUpdate's maxUnavailable (rounded down) or maxSurge (up) for ``replicas``."""
    if isinstance(value, int):
        return value
    share = replicas * int(value.rstrip("%")) / 100
    return math.ceil(share) if round_up else math.floor(share)


def test_a_rollout_takes_no_ready_predictor_pod_before_its_replacement_is_ready():
    """As the Deployment's maxUnavailable: 0. KServe's Deployment took the predictor's
    deploymentStrategy, else a RollingUpdate of 25% unavailable and 25% surge
    (setDefaultDeploymentSpec, deployment_reconciler.go, v0.14 to master): from 4 replicas,
    which the HPA reaches under load, a rollout took pods out before new ones were ready."""
    for isvc in find(render("kserve"), "InferenceService"):
        predictor = isvc["spec"]["predictor"]
        strategy = predictor.get("deploymentStrategy") or {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
        assert strategy["type"] == "RollingUpdate", isvc["metadata"]["name"]
        for replicas in range(predictor["minReplicas"], predictor["maxReplicas"] + 1):
            update = strategy["rollingUpdate"]
            assert _rollout_allowance(update["maxUnavailable"], replicas, False) == 0, \
                (isvc["metadata"]["name"], replicas)
            assert _rollout_allowance(update["maxSurge"], replicas, True) >= 1
