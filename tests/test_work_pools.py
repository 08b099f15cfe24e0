"""Work-pool base job templates and Kubernetes manifests: the state volume and the auth Secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.utilities.templating import PlaceholderType, apply_values, find_placeholders

REPO = Path(__file__).resolve().parent.parent
POOLS = REPO / "deployments" / "work-pools"
MANIFESTS = REPO / "deployments" / "kubernetes"
STATE_DIR = "/var/lib/cluster-mgmt"
AUTH_ENV = "PREFECT_API_AUTH_STRING"


def load_template(name: str) -> dict[str, Any]:
    return json.loads((POOLS / f"{name}.json").read_text())


def defaults(template: dict[str, Any]) -> dict[str, Any]:
    """Variable defaults, as Prefect's workers collect them before applying job variables."""
    props = template["variables"]["properties"]
    return {name: spec["default"] for name, spec in props.items() if "default" in spec}


def strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def mappings(value: Any):
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from mappings(item)
    elif isinstance(value, list):
        for item in value:
            yield from mappings(item)


def k8s_pod(template: dict[str, Any]) -> dict[str, Any]:
    return template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]


def manifests(name: str) -> list[dict[str, Any]]:
    with (MANIFESTS / name).open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def all_manifests() -> list[dict[str, Any]]:
    return [
        doc for name in ("storageclass.yaml", "pvc.yaml", "worker.yaml") for doc in manifests(name)
    ]


def assert_no_literal_auth(document: Any) -> None:
    """No env entry, env mapping or variable default carries the auth string as a value."""
    for mapping in mappings(document):
        if mapping.get("name") == AUTH_ENV:
            assert "value" not in mapping, mapping
            assert set(mapping["valueFrom"]) == {"secretKeyRef"}, mapping
        assert AUTH_ENV not in mapping, mapping


# --- the two base job templates ---------------------------------------------------------


@pytest.mark.parametrize("name", ["docker", "kubernetes"])
def test_template_has_configuration_and_variables(name):
    template = load_template(name)
    assert isinstance(template["job_configuration"], dict)
    assert isinstance(template["variables"]["properties"], dict)
    assert template["variables"]["type"] == "object"


@pytest.mark.parametrize("name", ["docker", "kubernetes"])
def test_every_placeholder_is_a_declared_variable(name):
    template = load_template(name)
    declared = set(template["variables"]["properties"])
    used = set()
    for text in strings(template["job_configuration"]):
        for placeholder in find_placeholders(text):
            assert placeholder.type is PlaceholderType.STANDARD, placeholder
            used.add(placeholder.name)
    assert used, "no {{ }} placeholders found: the template would ignore every job variable"
    assert used <= declared, f"undeclared variables: {sorted(used - declared)}"


@pytest.mark.parametrize("name", ["docker", "kubernetes"])
def test_no_literal_auth_string(name):
    template = load_template(name)
    assert_no_literal_auth(template)
    env_default = template["variables"]["properties"]["env"].get("default", {})
    assert AUTH_ENV not in env_default


@pytest.mark.parametrize("name", ["docker", "kubernetes"])
def test_image_is_a_placeholder_to_pin(name):
    image = load_template(name)["variables"]["properties"]["image"]
    assert image["default"] == "cluster-mgmt:latest"
    assert "pinned image" in image["description"]


def test_docker_template_mounts_state_volume():
    template = load_template("docker")
    variable = template["variables"]["properties"]["state_host_path"]
    assert variable["default"] == STATE_DIR
    volumes = template["job_configuration"]["volumes"]
    assert f"{{{{ state_host_path }}}}:{STATE_DIR}:rw" in volumes
    rendered = apply_values(template["job_configuration"], defaults(template))
    assert f"{STATE_DIR}:{STATE_DIR}:rw" in rendered["volumes"]
    rendered = apply_values(template["job_configuration"], {"state_host_path": "/mnt/ebs"})
    assert rendered["volumes"] == [f"/mnt/ebs:{STATE_DIR}:rw"]


def test_kubernetes_pod_mounts_state_claim():
    template = load_template("kubernetes")
    props = template["variables"]["properties"]
    assert props["state_pvc"]["default"] == "cluster-mgmt-state"
    pod = k8s_pod(template)
    claims = {
        volume["name"]: volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    state = [name for name, claim in claims.items() if claim == "{{ state_pvc }}"]
    assert len(state) == 1
    assert mounts[state[0]] == STATE_DIR


def test_kubernetes_pod_runs_as_non_root_with_writable_volume():
    pod = k8s_pod(load_template("kubernetes"))
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["fsGroup"] == 10001
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False


def test_kubernetes_auth_string_comes_from_secret():
    template = load_template("kubernetes")
    props = template["variables"]["properties"]
    assert props["auth_secret_name"]["default"] == "cluster-mgmt-prefect-auth"
    env = k8s_pod(template)["containers"][0]["env"]
    [entry] = [item for item in env if item["name"] == AUTH_ENV]
    assert entry["valueFrom"]["secretKeyRef"] == {
        "name": "{{ auth_secret_name }}",
        "key": "auth-string",
    }


def test_kubernetes_template_renders_with_prefect_templating():
    template = load_template("kubernetes")
    values = defaults(template) | {"state_pvc": "x"}
    rendered = apply_values(template["job_configuration"], values)
    assert "{{" not in json.dumps(rendered)
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    [claim] = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim == {"claimName": "x"}
    [entry] = [item for item in pod["containers"][0]["env"] if item["name"] == AUTH_ENV]
    assert entry["valueFrom"]["secretKeyRef"]["name"] == "cluster-mgmt-prefect-auth"
    assert rendered["namespace"] == "cluster-mgmt"
    assert pod["containers"][0]["image"] == "cluster-mgmt:latest"


# --- the Kubernetes manifests ------------------------------------------------------------


def test_manifests_parse():
    docs = all_manifests()
    assert {doc["kind"] for doc in docs} >= {
        "StorageClass",
        "PersistentVolumeClaim",
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    }
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]


def test_storage_class_is_encrypted_gp3_and_retained():
    storage_class = one(manifests("storageclass.yaml"), "StorageClass")
    assert storage_class["provisioner"] == "ebs.csi.aws.com"
    assert storage_class["parameters"]["type"] == "gp3"
    assert storage_class["parameters"]["encrypted"] == "true"
    assert storage_class["reclaimPolicy"] == "Retain"
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"


def test_claim_is_read_write_once_and_matches_the_pool():
    storage_class = one(manifests("storageclass.yaml"), "StorageClass")
    claim = one(manifests("pvc.yaml"), "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    props = load_template("kubernetes")["variables"]["properties"]
    assert claim["metadata"]["name"] == props["state_pvc"]["default"]
    assert claim["metadata"]["namespace"] == props["namespace"]["default"]


def worker_container() -> dict[str, Any]:
    deployment = one(manifests("worker.yaml"), "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_worker_deployment_runs_one_kubernetes_worker():
    docs = manifests("worker.yaml")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    container = worker_container()
    argv = container["command"] + container["args"]
    assert argv[:3] == ["prefect", "worker", "start"]
    for option, value in [("--pool", "cluster-mgmt-k8s"), ("--type", "kubernetes")]:
        assert argv[argv.index(option) + 1] == value
    assert argv[argv.index("--install-policy") + 1] == "never"
    assert "--with-healthcheck" in argv
    probe = container["livenessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert probe["path"] == "/health"
    assert ports.get(probe["port"], probe["port"]) == 8080


def test_worker_auth_string_comes_from_secret():
    env = {item["name"]: item for item in worker_container()["env"]}
    assert env[AUTH_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "cluster-mgmt-prefect-auth",
        "key": "auth-string",
    }
    assert env["PREFECT_API_URL"]["value"]
    # The worker copies its own auth string into each Job; these settings make it a reference.
    props = load_template("kubernetes")["variables"]["properties"]
    prefix = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_"
    assert env[prefix + "NAME"]["value"] == props["auth_secret_name"]["default"]
    assert env[prefix + "KEY"]["value"] == "auth-string"
    for doc in all_manifests():
        assert_no_literal_auth(doc)


def test_worker_rbac_is_namespaced_and_minimal():
    docs = manifests("worker.yaml")
    namespace = one(docs, "Namespace")["metadata"]["name"]
    role = one(docs, "Role")
    binding = one(docs, "RoleBinding")
    deployment = one(docs, "Deployment")
    account = one(docs, "ServiceAccount")
    assert not [doc for doc in docs if doc["kind"].startswith("Cluster")]
    for doc in (role, binding, deployment, account):
        assert doc["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}
    ]
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    )
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
    }
    env = {item["name"]: item.get("value") for item in worker_container()["env"]}
    # Without it the observer watches pods and jobs cluster-wide, which this Role does not allow.
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == namespace
    props = load_template("kubernetes")["variables"]["properties"]
    assert props["namespace"]["default"] == namespace


# --- the Job the Kubernetes worker would create ------------------------------------------


def test_kubernetes_worker_renders_a_valid_job(prefect_server):
    """Rendered as prefect-kubernetes' worker does, then read as the API server's Job schema."""
    import asyncio

    from kubernetes.client import ApiClient
    from prefect.client.schemas.objects import Flow, FlowRun
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    flow = Flow(name="provision-cluster")
    deployment = DeploymentResponse(name="default", flow_id=flow.id)
    run = FlowRun(name="brave-fox", flow_id=flow.id, deployment_id=deployment.id)
    values = {"state_pvc": "cluster-mgmt-state-prod"}
    configuration = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            load_template("kubernetes"), values
        )
    )
    configuration.prepare_for_flow_run(run, deployment=deployment, flow=flow)
    manifest = configuration.job_manifest

    assert "None" not in json.dumps(manifest["metadata"]), manifest["metadata"]
    assert manifest["metadata"]["generateName"].startswith("brave-fox")
    job = ApiClient()._ApiClient__deserialize(manifest, "V1Job")  # the Job schema, strictly
    assert ApiClient().sanitize_for_serialization(job) == _without_nulls(manifest)
    pod = job.spec.template.spec
    [claim] = [v.persistent_volume_claim for v in pod.volumes if v.persistent_volume_claim]
    assert claim.claim_name == "cluster-mgmt-state-prod"
    for container in pod.containers:
        resources = container.resources.to_dict() if container.resources else {}
        assert "0" not in json.dumps(resources), resources


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def test_bootstrap_converges_a_pool_a_worker_created_first(prefect_server, monkeypatch):
    """A worker started before bootstrap creates the pool with its default template (a CI race)."""
    import uuid

    from prefect.client.orchestration import SyncPrefectClient, get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from deployments.bootstrap import BootstrapReport, _ensure_work_pool

    pool = f"race-{uuid.uuid4().hex[:6]}"
    original = SyncPrefectClient.read_work_pool

    def worker_wins(self, name):  # the read misses; the worker's create lands before ours
        try:
            return original(self, name)
        except ObjectNotFound:
            self.create_work_pool(WorkPoolCreate(name=name, type="process"))
            raise

    monkeypatch.setattr(SyncPrefectClient, "read_work_pool", worker_wins)
    report = BootstrapReport()
    _ensure_work_pool(pool, "process", report)
    monkeypatch.undo()
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).base_job_template == load_template("process")
    assert report.kept == [f"work pool {pool} (job template set)"]
