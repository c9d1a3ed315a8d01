"""deploy/kubernetes and deploy/kserve, checked offline as a cluster would check them.

Every kustomization renders with ``kubectl kustomize``; every Kubernetes object validates with
kubernetes-validate in strict mode (unknown fields refused) for Kubernetes 1.30 and the newest
version it bundles; every KServe object validates against the openAPIV3Schema of KServe's own
CRDs (v0.20.0, vendored in tests/data/kserve-crds) with jsonschema, unknown fields refused as
the API server's strict field validation does. The facts a reviewer would check by eye
(probes, image, resources, drain time, selectors, overlays) are checked in
tests/test_deploy_manifest_facts.py, the security context and the NetworkPolicy in
tests/test_deploy_lockdown.py.
"""

import re

import jsonschema
import kubernetes_validate
import pytest
import referencing
import referencing.jsonschema
from kubernetes_validate.utils import major_minor

from tests.deploy_manifests import (
    DEPLOY,
    KSERVE_CRDS,
    KSERVE_GROUP,
    KUSTOMIZATIONS,
    load_yaml,
    needs_kubectl,
    one,
    render,
    sha256,
)

pytestmark = needs_kubectl

KUBERNETES_VERSIONS = ("1.30", major_minor(kubernetes_validate.utils.latest_version()))
EXPECTED_KINDS = {
    "kubernetes/base": ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                        "PodDisruptionBudget", "Service", "Service"],
    "kubernetes/overlays/tls": ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                                "PodDisruptionBudget", "Service", "Service"],
    "kubernetes/overlays/models-volume": ["Deployment", "HorizontalPodAutoscaler",
                                          "NetworkPolicy", "PersistentVolumeClaim",
                                          "PodDisruptionBudget", "Service", "Service"],
    "kserve": ["InferenceService", "InferenceService", "NetworkPolicy",
               "PersistentVolumeClaim", "PodDisruptionBudget", "PodDisruptionBudget",
               "ServingRuntime"],
}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


# --- rendering and schemas -------------------------------------------------------------------


def test_the_kustomizations_are_the_documented_ones():
    found = sorted(
        str(path.parent.relative_to(DEPLOY)) for path in DEPLOY.rglob("kustomization.yaml")
        if load_yaml(path)[0]["kind"] == "Kustomization"
    )
    assert found == sorted(KUSTOMIZATIONS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders(kustomization):
    objects = render(kustomization)
    assert sorted(item["kind"] for item in objects) == EXPECTED_KINDS[kustomization]
    names = [(item["kind"], item["metadata"]["name"]) for item in objects]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kubernetes_objects_validate_strictly(kustomization, version):
    errors = []
    for item in render(kustomization):
        if item["apiVersion"].startswith(KSERVE_GROUP + "/"):
            continue
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            errors.append(f"{item['kind']}/{item['metadata']['name']}: {path}: {error.message}")
    assert not errors, f"Kubernetes {version}:\n" + "\n".join(errors)


def _strict(schema: dict) -> dict:
    """A CRD schema as the API server's strict field validation applies it: an object with
    ``properties`` takes no other field unless it keeps unknown fields."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if ("additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_strict(sub) for sub in schema[key]]
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of the vendored KServe CRDs."""
    schemas = {}
    for path in sorted(KSERVE_CRDS.glob("*.yaml")):
        crd = load_yaml(path)[0]
        assert crd["kind"] == "CustomResourceDefinition"
        for version in crd["spec"]["versions"]:
            if version["served"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _object_meta_validator() -> jsonschema.Draft202012Validator:
    """ObjectMeta of the newest bundled Kubernetes (strict): names, labels, annotations."""
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{kubernetes_validate.utils.latest_version()}-local-strict/"
        "_definitions.json", kubernetes_validate.utils.latest_version())
    resource = referencing.Resource.from_contents(
        definitions, default_specification=referencing.jsonschema.DRAFT202012)
    schema = {"$ref": f"{definitions['$id']}#/$defs/{OBJECT_META}"}
    return jsonschema.Draft202012Validator(schema, registry=resource @ referencing.Registry())


def _kserve_errors(item: dict, schemas, meta) -> list[str]:
    key = (item["apiVersion"], item["kind"])
    if key not in schemas:
        return [f"{key}: no served version of a vendored KServe CRD"]
    name = f"{item['kind']}/{item['metadata']['name']}"
    errors = jsonschema.Draft7Validator(schemas[key]).iter_errors(item)
    meta_errors = meta.iter_errors(item["metadata"])
    return [f"{name}: {'.'.join(str(p) for p in error.path)}: {error.message}"
            for error in [*errors, *meta_errors]]


@pytest.fixture(scope="module")
def kserve_schemas():
    return _crd_schemas(), _object_meta_validator()


def test_kserve_objects_validate_against_kserves_crds(kserve_schemas):
    kserve = [item for item in render("kserve") if item["apiVersion"].startswith(KSERVE_GROUP)]
    assert sorted(item["kind"] for item in kserve) == [
        "InferenceService", "InferenceService", "ServingRuntime"]
    errors = [error for item in kserve for error in _kserve_errors(item, *kserve_schemas)]
    assert not errors, "\n".join(errors)


def test_the_validators_refuse_unknown_and_mistyped_fields(kserve_schemas):
    """The schema checks above are not vacuous: one misspelt or mistyped field fails them."""
    deployment = one(render("kubernetes/base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, version, strict=True)

    objects = render("kserve")
    isvc = one(objects, "InferenceService", "fashion-mnist")
    isvc["spec"]["predictor"]["model"]["storageURI"] = "pvc://misspelt"
    runtime = one(objects, "ServingRuntime")
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8081"
    annotated = one(objects, "InferenceService", "fashion-mnist-packaged")
    annotated["spec"]["predictor"]["scaleTarget"] = "70"
    for item in (isvc, runtime, annotated):
        assert _kserve_errors(item, *kserve_schemas), item["metadata"]["name"]


def test_the_vendored_crds_are_kserves_named_release():
    note = (KSERVE_CRDS / "README.md").read_text()
    assert re.search(r"release: \*\*v\d+\.\d+\.\d+\*\*", note)
    for path in KSERVE_CRDS.glob("*.yaml"):
        plural = path.stem.split("_")[1]
        assert f"{plural} `{sha256(path)}`" in note.replace("\n  ", " "), path.name
        assert f"config/crd/full/{path.name}" in note
    kinds = {load_yaml(path)[0]["spec"]["names"]["kind"] for path in KSERVE_CRDS.glob("*.yaml")}
    assert kinds == {"ServingRuntime", "InferenceService"}
