"""Cluster identity: one place for the environment/name rules and every key derived from them."""

from __future__ import annotations

import pytest

from cluster_mgmt.identity import ENVIRONMENT, NAME, ClusterId


def test_derived_keys():
    cluster = ClusterId("prod", "eu-web")
    assert cluster.lock_name == "cluster-prod-eu-web"
    assert cluster.artifact_key == "cluster-prod-eu-web"
    assert cluster.kubeconfig_block == "kubeconfig-prod-eu-web"
    assert cluster.rke_cluster_name == "prod-eu-web"
    assert cluster.event_resource_id == "cluster-mgmt.cluster.prod.eu-web"
    assert str(cluster) == "prod/eu-web"


def test_keys_never_collide():
    # `prod`/`eu-web` and `prod-eu`/`web` would share every key: the environment has no dash.
    with pytest.raises(ValueError, match="environment 'prod-eu'.*no dashes"):
        ClusterId("prod-eu", "web")


@pytest.mark.parametrize(
    ("environment", "name", "needle"),
    [
        ("Prod", "web", "environment"),
        ("", "web", "environment"),
        ("e" * 21, "web", "environment"),
        ("prod\n", "web", "environment"),
        ("prod", "Bad_Name", "DNS-1123 label"),
        ("prod", "-web", "name"),
        ("prod", "web-", "name"),
        ("prod", "", "name"),
        ("prod", "w" * 41, "at most 40"),
        ("prod", "web\n", "name"),
        ("prod", "../web", "name"),
    ],
)
def test_bad_identities_are_refused(environment, name, needle):
    with pytest.raises(ValueError, match=needle):
        ClusterId(environment, name)


def test_limits_are_inclusive():
    cluster = ClusterId("e" * 20, "w" * 40)
    assert cluster.rke_cluster_name == "e" * 20 + "-" + "w" * 40
    assert ENVIRONMENT.matches("default") and NAME.matches("a") and NAME.matches("a-1")
