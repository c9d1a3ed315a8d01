"""The facts a reviewer would check by eye in deploy/kubernetes and deploy/kserve, on the
objects ``kubectl kustomize`` renders: probes, image, resources, drain time, selectors and
overlays (KServe's own conventions and routing are tests/test_deploy_kserve.py's, the security
context and the NetworkPolicy tests/test_deploy_lockdown.py's). tests/test_deploy_manifests.py
checks that the same objects render and validate.
"""

import re

import pytest

import serving
from serving.workers import STOP_MARGIN_S
from tests.deploy_manifests import (
    DEPLOY,
    IMAGE_COMPONENT,
    KUSTOMIZATIONS,
    PROBES,
    Workload,
    compose_image_name,
    container_argv,
    container_env,
    cpu_quantity,
    find,
    image_component,
    load_yaml,
    needs_kubectl,
    one,
    probe_ports,
    render,
    server_settings,
    workloads,
)

pytestmark = needs_kubectl

KUBERNETES = [k for k in KUSTOMIZATIONS if k.startswith("kubernetes/")]
EXIT_S = 1  # the supervisor's own exit, once its workers are gone


def settings_of(workload: Workload) -> dict[str, str]:
    env = container_env(workload, secrets=_AnySecret())
    return server_settings(container_argv(workload), env)


class _AnySecret(dict):
    def __missing__(self, key):
        return f"<secret {key[0]}/{key[1]}>"


# --- the facts a reviewer checks ------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_are_grpc_on_ports_the_server_listens_on(kustomization):
    for workload in workloads(render(kustomization), kustomization):
        settings = settings_of(workload)
        port, health_port = int(settings["port"]), int(settings["health_port"])
        listening = {port} | ({health_port} if health_port else set())
        ports = probe_ports(workload)
        assert sorted(ports) == sorted(PROBES), workload.source
        for probe, probe_port in ports.items():
            assert set(workload.container[probe]) & {"exec", "httpGet", "tcpSocket"} == set()
            assert isinstance(probe_port, int), f"{workload.source} {probe}: not a number"
            assert probe_port in listening, f"{workload.source} {probe}: {probe_port}"
        # kubelet can present neither a client certificate nor a token
        if settings["tls_cert"] or settings["auth_token"]:
            assert health_port and set(ports.values()) == {health_port}, workload.source
        declared = {p["containerPort"] for p in workload.container.get("ports") or []}
        assert listening <= declared, workload.source
        startup = workload.container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, workload.source
        # one probe slow under load (2 s) must not take the pod out of its Endpoints
        assert workload.container["readinessProbe"]["failureThreshold"] >= 3, workload.source


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_port_the_server_serves_on_is_one_a_client_can_reach(kustomization):
    """A port the server serves on but the container does not declare is reachable by no
    Service (KServe's Service takes the declared ports only), open on the pod's address. On
    KServe, metrics are scraped at the pod's address (annotations), declared or not."""
    for workload in workloads(render(kustomization), kustomization):
        settings = settings_of(workload)
        serving = {int(settings[key]) for key in ("port", "http_port")} - {0}
        if not kustomization.startswith("kserve"):
            serving.add(int(settings["metrics_port"]))
        declared = [p["containerPort"] for p in workload.container.get("ports") or []]
        assert serving <= set(declared), workload.source


def test_the_image_is_composes_with_its_tag_set_in_one_place():
    name = compose_image_name()
    entries = image_component()["images"]
    assert [entry["name"] for entry in entries] == [name]
    image = f"{entries[0].get('newName', name)}:{entries[0]['newTag']}"

    rendered = [w.container["image"] for k in KUSTOMIZATIONS for w in workloads(render(k))]
    assert len(rendered) == 5
    assert set(rendered) == {image}

    def images(value):
        if isinstance(value, dict):
            for key, sub in value.items():
                yield from [sub] if key == "image" else images(sub)
        elif isinstance(value, list):
            for sub in value:
                yield from images(sub)

    sources = [path for top in ("kubernetes", "kserve")
               for path in sorted((DEPLOY / top).rglob("*.yaml"))]
    written = {path.relative_to(DEPLOY): list(images(load_yaml(path))) for path in sources}
    assert {image for found in written.values() for image in found} == {name}, written
    tagged = [path for path in sources if re.search(r"^\s*(images|newTag):", path.read_text(),
                                                     re.MULTILINE)]
    assert tagged == [IMAGE_COMPONENT]


def test_the_image_tag_names_one_build_never_latest():
    """The pods pull `IfNotPresent` (a locally loaded image needs it): with a tag that moves,
    `latest`, each node runs the build it pulled first, and a new build changes no pod spec for
    `kubectl apply` to roll out. So the tag names one build: as shipped, the release's version
    (`FMNIST_IMAGE_TAG=VERSION docker compose build` makes that image)."""
    entry = image_component()["images"][0]
    if "digest" not in entry:  # a digest names one build, whatever the tag
        assert str(entry.get("newTag", "latest")) != "latest"
        if entry.get("newName", compose_image_name()) == compose_image_name():
            assert str(entry["newTag"]) == serving.__version__
    policies = {w.container.get("imagePullPolicy") for k in KUSTOMIZATIONS
                for w in workloads(render(k))}
    assert policies == {"IfNotPresent"}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_resources_are_limited_and_size_the_workers(kustomization):
    for workload in workloads(render(kustomization), kustomization):
        resources = workload.container["resources"]
        for resource in ("cpu", "memory"):
            assert resource in resources["requests"], workload.source
            assert resource in resources["limits"], workload.source
        limit = cpu_quantity(resources["limits"]["cpu"])
        assert cpu_quantity(resources["requests"]["cpu"]) <= limit
        assert limit == int(limit) >= 1, "whole CPUs: one worker process each"
        # a worker process per CPU, each running as many onnxruntime calls (README, "Sizing"),
        # from the request: where a policy removes CPU limits, limits.cpu reads the node's CPUs
        sized = ("workers", "parallel_inferences")
        for setting in sized:
            [source] = [item["valueFrom"] for item in workload.container["env"]
                        if item["name"] == "FMNIST_" + setting.upper()]
            assert source["resourceFieldRef"]["resource"] == "requests.cpu", workload.source
        assert [int(settings_of(workload)[setting]) for setting in sized] == [limit, limit]
        del workload.container["resources"]["limits"]
        assert [int(settings_of(workload)[setting]) for setting in sized] == [limit, limit], \
            "one per CPU of the node"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_pod_outlives_its_drain(kustomization):
    """kubelet sends SIGKILL terminationGracePeriodSeconds after the preStop hook starts; after
    SIGTERM the server's supervisor waits for its workers' drain (the grace period) and
    STOP_MARGIN_S more before it kills them: the pod must outlive both, not a margin of its own
    that a longer STOP_MARGIN_S would pass unnoticed."""
    for workload in workloads(render(kustomization), kustomization):
        drain_s = float(settings_of(workload)["grace_period"])
        assert workload.pre_stop_s > 0, workload.source
        assert (workload.termination_grace_s
                >= workload.pre_stop_s + drain_s + STOP_MARGIN_S + EXIT_S), workload.source


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_client_connections_are_renewed_so_added_replicas_get_calls(kustomization):
    """A gRPC client keeps its connection: without an age the replicas an autoscaler adds
    never got the calls of the clients already connected."""
    for workload in workloads(render(kustomization), kustomization):
        assert 0 < float(settings_of(workload)["max_connection_age"]) <= 300, \
            workload.source


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_server_takes_the_settings_as_written_and_no_misspelt_one(kustomization):
    """The settings are read by fmnist-serve's own parser, not by a copy of it: a value it
    refuses (FMNIST_MAX_CONNECTION_AGE 0.01, under its 0.1) would crash-loop the pods, and a
    misspelt variable (FMNIST_GRACE_PERIODS) is only warned of in the log while its setting
    keeps the default; the tests' own reading of the manifests took both."""
    for workload in workloads(render(kustomization), kustomization):
        settings_of(workload)  # as written: taken
        for name, value in (("FMNIST_MAX_CONNECTION_AGE", "0.01"), ("FMNIST_GRACE_PERIODS", "9")):
            env = [*workload.container["env"], {"name": name, "value": value}]
            changed = Workload(workload.source, {**workload.container, "env": env}, workload.pod)
            with pytest.raises(AssertionError, match=name):
                settings_of(changed)


# What a mesh or gateway takes a Service port to carry in cleartext: its appProtocol, else (no
# appProtocol) the protocol its name starts with, Istio's rule: a port named grpc is HTTP/2.
CLEARTEXT = {"kubernetes.io/h2c", "http", "http2", "grpc", "grpc-web"}


def _mesh_protocol(port: dict) -> str:
    return port.get("appProtocol") or port["name"].partition("-")[0]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("kustomization", KUBERNETES)
def test_services_hpa_and_pdb_reach_the_deployment(kustomization):
    objects = render(kustomization)
    deployment = one(objects, "Deployment")
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    [workload] = workloads([deployment])
    settings = settings_of(workload)
    named = {port["name"]: port["containerPort"] for port in workload.container["ports"]}
    tls = bool(settings["tls_cert"])

    services = {item["metadata"]["name"]: item for item in find(objects, "Service")}
    assert set(services) == {"fashion-mnist", "fashion-mnist-headless"}
    assert services["fashion-mnist-headless"]["spec"]["clusterIP"] == "None"
    for service in services.values():
        assert _selects(service["spec"]["selector"], labels)
        for port in service["spec"]["ports"]:
            assert named[port["targetPort"]] == port["port"], port
        grpc = [port for port in service["spec"]["ports"] if port["name"] == "grpc"]
        assert [named[port["targetPort"]] for port in grpc] == [int(settings["port"])]
        for port in service["spec"]["ports"]:  # as a mesh reads it: TLS is not cleartext
            speaks_tls = tls and port["targetPort"] in ("grpc", "http")
            assert (_mesh_protocol(port) in CLEARTEXT) is not speaks_tls, (kustomization, port)
        assert grpc[0].get("appProtocol") == ("https" if tls else "kubernetes.io/h2c")
    metrics = [port for port in services["fashion-mnist"]["spec"]["ports"]
               if port["name"] == "metrics"]
    assert [named[port["targetPort"]] for port in metrics] == [int(settings["metrics_port"])]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == settings["metrics_port"]
    assert annotations["prometheus.io/path"] == "/metrics"

    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = one(objects, "PodDisruptionBudget")
    assert "selector" in pdb["spec"], "a PodDisruptionBudget without a selector guards nothing"
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    # a pod that never became ready must not block a node's drain
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # the replicas spread over nodes where the cluster has several
    [spread] = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(spread["labelSelector"]["matchLabels"], labels)


def test_the_tls_overlay_reads_its_secrets_and_probes_the_health_port():
    [workload] = workloads(render("kubernetes/overlays/tls"))
    settings = settings_of(workload)
    secret_mounts = {mount["mountPath"]: volume["secret"]["secretName"]
                     for mount, volume in workload.mounts() if "secret" in volume}
    assert list(secret_mounts.values()) == ["fashion-mnist-tls"]
    [mount_path] = secret_mounts
    for setting, key in (("tls_cert", "tls.crt"), ("tls_key", "tls.key"),
                         ("tls_client_ca", "ca.crt")):
        assert settings[setting] == f"{mount_path}/{key}"
    token = [item for item in workload.container["env"] if item["name"] == "FMNIST_AUTH_TOKEN"]
    assert token[0]["valueFrom"]["secretKeyRef"] == {"name": "fashion-mnist-token",
                                                     "key": "token"}
    assert int(settings["health_port"]) not in (0, int(settings["port"]))
    assert set(probe_ports(workload).values()) == {int(settings["health_port"])}


def test_the_models_volume_overlay_serves_a_read_only_claim():
    objects = render("kubernetes/overlays/models-volume")
    [workload] = workloads(objects)
    settings = settings_of(workload)
    claims = {mount["mountPath"]: (mount, volume) for mount, volume in workload.mounts()
              if "persistentVolumeClaim" in volume}
    mount, volume = claims[settings["model_repository"]]
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    claim = one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica, and the publisher
    assert float(settings["poll_interval"]) > 0, "the watcher follows published versions"
