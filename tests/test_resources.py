"""Managed resources through a real Prefect server, lab rke and the lab's Kubernetes API:
apply (server-side, recorded once applied), list, re-apply by configure-cluster, delete, and
bad input refused before anything is applied."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from typer.testing import CliRunner

from deployments.cli import app
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 180  # nodes 127.0.0.180-182; the cluster's API on 127.0.0.180:6443

pytestmark = pytest.mark.usefixtures("prefect_server")

WEB = """
apiVersion: v1
kind: ConfigMap
metadata: {name: web-settings}
data: {greeting: hello}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: customer}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx:1.27}]}
---
"""


def core(env: Env) -> client.CoreV1Api:
    admin = yaml.safe_load(env.cluster.read_text("kube_config_cluster.yml"))
    return client.CoreV1Api(config.new_client_from_config_dict(admin))


def exists(call) -> bool:
    try:
        call()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def configmap(env: Env, name: str = "web-settings", namespace: str = "default"):
    return core(env).read_namespaced_config_map(name, namespace)


def test_apply_list_reapply_and_delete(env: Env):
    assert env.provision().is_completed()
    state = env.apply("web", WEB)
    assert state.is_completed(), failure_message(state)
    record = list(yaml.safe_load_all(env.cluster.read_text("resources/web.yaml")))
    assert [(o["kind"], o["metadata"]["namespace"]) for o in record] == [
        ("ConfigMap", "default"),
        ("Deployment", "customer"),
    ]
    applied = configmap(env)
    assert applied.data == {"greeting": "hello"}
    assert {m.manager for m in applied.metadata.managed_fields} == {"cluster-mgmt"}
    apps = client.AppsV1Api(core(env).api_client)
    assert apps.read_namespaced_deployment("web", "customer").spec.replicas == 2

    listed = CliRunner().invoke(app, ["resources", "test", env.name])
    assert listed.exit_code == 0 and listed.output.split() == ["cluster-mgmt-customer", "web"]

    # the same manifest again changes nothing
    assert env.apply("web", WEB).is_completed()
    assert configmap(env).metadata.resource_version == applied.metadata.resource_version

    # configure-cluster re-applies what is recorded
    core(env).delete_namespaced_config_map("web-settings", "default")
    assert env.configure().is_completed()
    assert configmap(env).data == {"greeting": "hello"}
    assert "managed resources applied: web" in env.cluster.read_status().message

    # a new version without the ConfigMap deletes it
    only_deployment = WEB.split("---")[1]
    assert env.apply("web", only_deployment).is_completed()
    assert not exists(configmap.__get__(env))
    assert apps.read_namespaced_deployment("web", "customer")

    state = env.delete_resource("web")
    assert state.is_completed(), failure_message(state)
    assert not exists(lambda: apps.read_namespaced_deployment("web", "customer"))
    assert env.cluster.read_text("resources/web.yaml") is None
    assert env.cluster.resource_names() == ["cluster-mgmt-customer"]
    gone = env.delete_resource("web")
    assert gone.is_failed() and "no managed resource web" in failure_message(gone)


BAD = {
    "yaml": ("web", "kind: [unclosed", "does not parse as YAML"),
    "kind": ("web", "apiVersion: v1\nmetadata: {name: a}\n", "document 1: missing kind"),
    "name": (
        "web",
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\n"
            "kind: ConfigMap\nmetadata: {labels: {a: b}}\n"
        ),
        "document 2: missing metadata.name",
    ),
    "unserved": (
        "web",
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n"
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\n"
            "apiVersion: apps/v1\nkind: Gadget\nmetadata: {name: g}\n"
        ),
        (
            "does not serve these kinds, nothing applied: document 2: Widget in example.com/v1; "
            "document 3: Gadget in apps/v1"
        ),
    ),
    "path": ("../../etc", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n", "DNS-1123"),
    "reserved": (
        "cluster-mgmt-customer",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n",
        "reserved",
    ),
    "size": (
        "web",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\ndata: {big: '"
        + "x" * (300 * 1024)
        + "'}\n",
        "over the limit of 262144",
    ),
    "secret": (
        "web",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n",
        "kind Secret",
    ),
}


def test_bad_input_is_refused_before_anything_is_applied(env: Env):
    assert env.provision().is_completed()
    for case, (resource, manifest, expected) in BAD.items():
        state = env.apply(resource, manifest)
        assert state.is_failed(), case
        assert expected in failure_message(state), (case, failure_message(state))
        assert not exists(lambda: configmap(env, "ok")), case
        assert env.cluster.resource_names() == ["cluster-mgmt-customer"], case
        assert env.cluster.read_status().phase == "READY", case

    env.cluster.write_status("FAILED", "provision", "earlier-run", "interrupted")
    state = env.apply("web", WEB)
    assert state.is_failed() and "is FAILED, not READY" in failure_message(state)
    assert not exists(configmap.__get__(env))


def test_a_half_applied_manifest_is_reported_object_by_object(env: Env):
    assert env.provision().is_completed()
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: second, namespace: no-such-ns}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: third}\n"
    )
    state = env.apply("parts", manifest)
    assert state.is_failed()
    message = failure_message(state) or state.message
    assert "ConfigMap no-such-ns/second failed" in message
    assert "done: ConfigMap default/first" in message
    assert "not attempted: ConfigMap default/third" in message
    assert "record is unchanged" in message
    assert env.cluster.read_text("resources/parts.yaml") is None
    assert env.cluster.read_status().phase == "READY"
    assert exists(lambda: configmap(env, "first"))


def test_api_down_during_apply_keeps_the_record(env: Env):
    assert env.provision().is_completed()
    assert env.apply("web", WEB).is_completed()
    recorded = env.cluster.read_text("resources/web.yaml")
    env.api("down")
    try:
        state = env.apply("web", WEB.replace("hello", "bye"))
    finally:
        env.api("up")
    assert state.is_failed() and "no answer" in (failure_message(state) or state.message)
    assert env.cluster.read_text("resources/web.yaml") == recorded
    assert configmap(env).data == {"greeting": "hello"}
