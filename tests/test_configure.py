"""Customer configuration through a real Prefect server, lab nodes, lab rke and the lab's
Kubernetes API over TLS: provision → CONFIGURING → READY, configure-cluster, rotation."""

from __future__ import annotations

import base64
import functools
import json

import httpx
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

import cluster_mgmt.customer
from cluster_mgmt.spec import CustomerAccess
from tests.conftest import API_URL, AUTH_STRING
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 170  # nodes 127.0.0.170-172; the cluster's API on 127.0.0.170:6443

pytestmark = pytest.mark.usefixtures("prefect_server")


def customer_client(kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config_dict(yaml.safe_load(kubeconfig))


def admin_client(env: Env) -> client.ApiClient:
    return customer_client(env.cluster.read_text("kube_config_cluster.yml"))


def block_value(env: Env) -> str | None:
    try:
        return Secret.load(f"kubeconfig-test-{env.name}").get()
    except ValueError:
        return None


def status_code(call) -> int:
    try:
        call()
    except ApiException as exc:
        return exc.status
    return 200


def token_secrets(env: Env, namespace: str) -> list[str]:
    with admin_client(env) as api:
        listing = client.CoreV1Api(api).list_namespaced_secret(
            namespace, label_selector=cluster_mgmt.customer.TOKEN_LABEL
        )
    return sorted(s.metadata.name for s in listing.items)


def test_provision_configures_a_cluster_admin_customer(env: Env):
    state = env.provision()
    assert state.is_completed(), failure_message(state)
    status = env.cluster.read_status()
    assert status.phase == "READY" and "customer cluster-admin" in status.message
    kubeconfig = env.cluster.read_text("customer_kube_config.yml")
    assert (env.cluster.dir / "customer_kube_config.yml").stat().st_mode & 0o777 == 0o600
    assert block_value(env) == kubeconfig
    # the Secret block is served only with the shared token (the original served it to anyone)
    blocks = f"{API_URL}/block_documents/filter"
    assert httpx.post(blocks, json={}).status_code == 401
    assert httpx.post(blocks, json={}, auth=tuple(AUTH_STRING.split(":", 1))).status_code == 200
    doc = yaml.safe_load(kubeconfig)
    assert doc["clusters"][0]["cluster"]["server"] == f"https://{env.lab.nodes[0].address}:6443"
    with customer_client(kubeconfig) as api:
        nodes = client.CoreV1Api(api).list_node().items
        assert len(nodes) == 3
        client.CoreV1Api(api).list_namespaced_pod("kube-system")
    [secret] = token_secrets(env, "customer")
    assert secret.startswith("customer-admin-token-")

    # the phases it went through, as the artifact's versions recorded them
    with get_client(sync_client=True) as prefect:
        versions = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"cluster-test-{env.name}"]))
        )
    phases = [a.metadata_["phase"] for a in sorted(versions, key=lambda a: a.created)]
    assert phases.index("CONFIGURING") < len(phases) - 1 and phases[-1] == "READY"
    assert phases.index("PROVISIONING") < phases.index("CONFIGURING")

    # a rerun converges: same token, same objects, no new token Secret
    before = token_secrets(env, "customer")
    again = env.configure()
    assert again.is_completed(), failure_message(again)
    assert env.cluster.read_text("customer_kube_config.yml") == kubeconfig
    assert token_secrets(env, "customer") == before
    assert "token kept" in env.cluster.read_status().message

    down = env.teardown()
    assert down.is_completed(), failure_message(down)
    assert block_value(env) is None
    archived = env.cluster.dir.parent.parent.parent.parent / "archive" / "test"
    assert not list(archived.glob(f"{env.name}-*/customer_kube_config.yml"))


def test_namespace_admin_is_confined_to_its_namespace(env: Env):
    customer = CustomerAccess(
        namespace="team-a", service_account="deployer", access="namespace-admin"
    )
    state = env.provision(env.spec(customer=customer))
    assert state.is_completed(), failure_message(state)
    kubeconfig = env.cluster.read_text("customer_kube_config.yml")
    assert yaml.safe_load(kubeconfig)["contexts"][0]["context"]["namespace"] == "team-a"
    with customer_client(kubeconfig) as api:
        core = client.CoreV1Api(api)
        assert core.list_namespaced_service_account("team-a").items
        assert status_code(core.list_node) == 403
        assert status_code(lambda: core.list_namespaced_pod("kube-system")) == 403
        assert status_code(core.list_namespace) == 403
    with admin_client(env) as api:
        rbac = client.RbacAuthorizationV1Api(api)
        bindings = rbac.list_cluster_role_binding().items
        assert not [
            b
            for b in bindings
            if (b.metadata.labels or {}).get("app.kubernetes.io/managed-by") == "cluster-mgmt"
        ]
        binding = rbac.read_namespaced_role_binding("cluster-mgmt.deployer", "team-a")
        assert binding.role_ref.name == "admin"
        managers = {m.manager for m in binding.metadata.managed_fields}
        assert managers == {"cluster-mgmt"}


def test_api_down_mid_configure_fails_then_configure_converges(env: Env, monkeypatch):
    real = cluster_mgmt.customer.new_token_secret

    def api_goes_down(customer):  # after namespace, account and binding were applied
        env.api("down")
        return real(customer)

    monkeypatch.setattr(cluster_mgmt.customer, "new_token_secret", api_goes_down)
    state = env.provision()
    assert state.is_failed()
    message = failure_message(state)
    assert "configure step 'token secret' failed" in message
    status = env.cluster.read_status()
    assert status.phase == "FAILED" and "configure step 'token secret'" in status.message
    assert env.cluster.read_text("customer_kube_config.yml") is None and block_value(env) is None

    monkeypatch.setattr(cluster_mgmt.customer, "new_token_secret", real)
    env.api("up")
    ups = len(list(env.cluster.history_dir.glob("*-up")))

    # the token controller never fills the new Secret: the bounded wait gives up, in one line
    real_wait = cluster_mgmt.customer.wait_for_token
    monkeypatch.setattr(
        cluster_mgmt.customer, "wait_for_token", functools.partial(real_wait, timeout=1.0)
    )
    env.supervisor.call("tokens", address=env.lab.nodes[0].address, running=False)
    try:
        stalled = env.configure()
    finally:
        env.supervisor.call("tokens", address=env.lab.nodes[0].address, running=True)
    message = failure_message(stalled)
    assert stalled.is_failed() and "\n" not in message
    assert message.startswith(
        "configure step 'token' failed: no token in /api/v1/namespaces/customer/secrets/"
        "customer-admin-token-"
    )
    assert message.endswith("after 1 s: is the controller manager's token controller running?")
    assert env.cluster.read_status().phase == "FAILED"
    assert env.cluster.read_text("customer_kube_config.yml") is None and block_value(env) is None
    monkeypatch.setattr(cluster_mgmt.customer, "wait_for_token", real_wait)

    rerun = env.configure()
    assert rerun.is_completed(), failure_message(rerun)
    assert len(list(env.cluster.history_dir.glob("*-up"))) == ups  # no rke up
    assert env.cluster.read_status().phase == "READY"
    with customer_client(env.cluster.read_text("customer_kube_config.yml")) as api:
        assert client.CoreV1Api(api).list_node().items
    assert len(token_secrets(env, "customer")) == 1
    # and provision with the same spec now finds it READY: nothing to do
    assert env.provision().is_completed()
    assert len(list(env.cluster.history_dir.glob("*-up"))) == ups


def test_a_ready_cluster_without_customer_access_is_configured_by_its_next_provision(env: Env):
    assert env.provision().is_completed()
    # as a cluster provisioned before the service configured customers
    (env.cluster.dir / "resources" / "cluster-mgmt-customer.yaml").unlink()
    (env.cluster.dir / "customer_kube_config.yml").unlink()
    refused = env.configure()
    assert refused.is_failed() and "no recorded customer access" in failure_message(refused)
    state = env.provision()
    assert state.is_completed(), failure_message(state)
    assert env.cluster.resource_names() == ["cluster-mgmt-customer"]
    with customer_client(env.cluster.read_text("customer_kube_config.yml")) as api:
        assert client.CoreV1Api(api).list_node().items


def test_configure_is_refused_before_rke_brought_the_cluster_up(env: Env):
    env.fault(fail_at="worker")
    assert env.provision().is_failed()
    state = env.configure()
    assert state.is_failed()
    assert "run provision-cluster again to resume it" in failure_message(state)
    assert env.cluster.read_status().phase == "FAILED"  # a refusal keeps the status


def works_now(kubeconfig: str) -> bool:
    """The kubeconfig's token is accepted right now (a real request to the lab API)."""
    with customer_client(kubeconfig) as api:
        return status_code(client.CoreV1Api(api).list_node) == 200


def test_rotation_revokes_the_old_token_only_after_the_new_one_works(env: Env, monkeypatch):
    assert env.provision().is_completed()
    old = env.cluster.read_text("customer_kube_config.yml")
    [old_secret] = token_secrets(env, "customer")

    def old_kept() -> None:  # a failed rotation leaves the customer's credentials alone
        assert works_now(old) and old_secret in token_secrets(env, "customer")
        assert env.cluster.read_text("customer_kube_config.yml") == old == block_value(env)

    # the new token exists but is refused: the old one stays
    real_works = cluster_mgmt.customer.works
    monkeypatch.setattr(cluster_mgmt.customer, "works", lambda config, customer: config == old)
    refused = env.rotate()
    assert refused.is_failed()
    assert "is refused by the cluster" in failure_message(refused)
    old_kept()
    assert len(token_secrets(env, "customer")) == 2  # the refused one is left, unused
    monkeypatch.setattr(cluster_mgmt.customer, "works", real_works)
    assert env.configure().is_completed()  # back to READY; it keeps the old token
    assert token_secrets(env, "customer") == [old_secret]

    # a rotation that works: the order, as it happens
    seen: list[str] = []

    def checking(config: str, customer) -> bool:
        names = token_secrets(env, "customer")
        if config != old:  # the new token is checked while the old one still works
            assert works_now(old) and old_secret in names and len(names) == 2
            seen.append("new token checked; old works")
        return real_works(config, customer)

    real_revoke = cluster_mgmt.customer.revoke_other_tokens

    def revoking(kube, customer, credentials):
        new = env.cluster.read_text("customer_kube_config.yml")
        assert new != old and block_value(env) == new  # stored before anything is revoked
        assert works_now(old)
        seen.append("stored; revoking")
        return real_revoke(kube, customer, credentials)

    monkeypatch.setattr(cluster_mgmt.customer, "works", checking)
    monkeypatch.setattr(cluster_mgmt.customer, "revoke_other_tokens", revoking)
    state = env.rotate()
    assert state.is_completed(), failure_message(state)
    assert seen == ["new token checked; old works", "stored; revoking"]
    new = env.cluster.read_text("customer_kube_config.yml")
    assert new != old and block_value(env) == new
    new_secrets = token_secrets(env, "customer")
    assert len(new_secrets) == 1 and old_secret not in new_secrets
    assert works_now(new) and not works_now(old)
    with customer_client(old) as api:
        assert status_code(client.CoreV1Api(api).list_node) == 401


@pytest.mark.parametrize("operation", ["configure", "apply", "delete_resource", "rotate"])
def test_each_operation_takes_the_cluster_lock(env: Env, operation: str):
    env.cluster.create()
    run = {
        "configure": env.configure,
        "apply": lambda: env.apply(
            "web", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"
        ),
        "delete_resource": lambda: env.delete_resource("web"),
        "rotate": env.rotate,
    }[operation]
    with env.cluster.lock("teardown", "run-123"):
        state = run()
    assert state.is_failed()
    message = failure_message(state)
    assert message == "operation teardown in progress (flow run run-123)", message
    assert env.cluster.read_status() is None  # a busy refusal records nothing


def test_token_and_kubeconfig_never_reach_the_api(env: Env):
    states = [env.provision(), env.rotate(), env.configure()]
    assert all(s.is_completed() for s in states)
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    kubeconfig = env.cluster.read_text("customer_kube_config.yml")
    token = yaml.safe_load(kubeconfig)["users"][0]["user"]["token"]
    with admin_client(env) as api:
        secrets = client.CoreV1Api(api).list_namespaced_secret("customer").items
    encoded = [s.data["token"] for s in secrets if s.data and "token" in s.data]
    tokens = [token, *encoded, *(base64.b64decode(t).decode() for t in encoded)]
    text = ""
    with get_client(sync_client=True) as prefect:
        for state in states:
            run = prefect.read_flow_run(state.state_details.flow_run_id)
            logs = prefect.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
            assert logs
            text += "\n".join(log.message for log in logs)
            text += json.dumps(run.parameters) + (run.state.message or "")
            text += json.dumps(state.result())
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"cluster-test-{env.name}"]))
        )
        text += "".join(str(a.data) + str(a.description) + str(a.metadata_) for a in artifacts)
        body = {"filter": {"resource": {"id": [f"cluster-mgmt.cluster.test.{env.name}"]}}}
        events = prefect.request("POST", "/events/filter", json=body).json()
        text += json.dumps(events)
    assert "customer-admin" in text  # the summary is there, the credentials are not
    for secret in tokens:  # a JWT's head is the same for all: look for its signature
        assert secret not in text and secret[-40:] not in text
    assert "certificate-authority-data" not in text
