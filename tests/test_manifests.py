"""Managed-resource manifests and names, and the customer's access objects (no cluster needed)."""

from __future__ import annotations

import pytest

from cluster_mgmt.customer import access_manifests, customer_kubeconfig, stored_token
from cluster_mgmt.manifests import (
    MAX_MANIFEST_BYTES,
    ManifestError,
    check_resource_name,
    parse_manifest,
    stale,
)
from cluster_mgmt.spec import CustomerAccess

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\n"


def test_multi_document_manifest_skips_empty_documents():
    objects = parse_manifest("---\n" + CM % "a" + "---\n" + CM % "b" + "---\n")
    assert [o["metadata"]["name"] for o in objects] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1", "does not parse as YAML"),
        ("- 1\n- 2\n", "document 1: not a YAML mapping"),
        ("kind: ConfigMap\nmetadata: {name: a}\n", "document 1: missing apiVersion"),
        (CM % "a" + "---\napiVersion: v1\nkind: ConfigMap\n", "document 2: missing metadata.name"),
        ("apiVersion: v1\nkind: List\nmetadata: {name: a}\nitems: []\n", "separate documents"),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n", "kind Secret"),
        ("---\n---\n", "holds no object"),
        ("apiVersion: apps/v1/../../api/v1\nkind: Secret\nmetadata: {name: a}\n", "apiVersion"),
        (CM % "a" + "data: {x: '" + "y" * MAX_MANIFEST_BYTES + "'}\n", "over the limit"),
    ],
)
def test_bad_manifests_say_what_to_fix(text, expected):
    with pytest.raises(ManifestError, match=expected):
        parse_manifest(text)


@pytest.mark.parametrize(
    "name", ["../etc", "a/b", "Web", "-web", "a.b", "", "x" * 64, "cluster-mgmt-customer"]
)
def test_resource_names_cannot_name_paths_or_the_reserved_record(name):
    with pytest.raises(ManifestError):
        check_resource_name(name)


def test_stale_objects_are_those_a_new_version_drops():
    old = parse_manifest(CM % "a" + "---\n" + CM % "b")
    new = parse_manifest(CM % "b")
    assert [o["metadata"]["name"] for o in stale(old, new)] == ["a"]


def test_access_levels_bind_the_right_role_where():
    admin = access_manifests(CustomerAccess())
    assert [o["kind"] for o in admin] == ["Namespace", "ServiceAccount", "ClusterRoleBinding"]
    assert admin[2]["roleRef"]["name"] == "cluster-admin"
    confined = access_manifests(CustomerAccess(namespace="t", access="namespace-admin"))
    assert confined[2]["kind"] == "RoleBinding" and confined[2]["metadata"]["namespace"] == "t"
    assert confined[2]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "admin",
    }


def test_customer_kubeconfig_carries_server_ca_token_and_namespace():
    text = customer_kubeconfig("dev-web", "https://10.0.0.1:6443", "Q0E=", CustomerAccess(), "t0k")
    assert stored_token(text) == "t0k"
    assert "https://10.0.0.1:6443" in text and "certificate-authority-data: Q0E=" in text
    assert "namespace: customer" in text


def test_cli_apply_checks_the_manifest_before_calling_the_api(tmp_path):
    from typer.testing import CliRunner

    from deployments.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\n")
    result = CliRunner().invoke(app, ["apply", "dev", "web", "-f", str(bad), "--name", "web"])
    assert result.exit_code == 2 and "missing metadata.name" in result.output
    result = CliRunner().invoke(app, ["apply", "dev", "web", "-f", str(bad), "--name", "a/b"])
    assert result.exit_code == 2 and "DNS-1123" in result.output
