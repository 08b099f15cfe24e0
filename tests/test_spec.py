"""ClusterSpec: every rejection design.md lists names the field and the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cluster_mgmt.spec import ClusterSpec, SpecError

SUPPORTED = ["v1.29.9-rancher1-1", "v1.30.5-rancher1-1"]


def node(address: str, *roles: str, **extra) -> dict:
    return {"address": address, "roles": list(roles), **extra}


def three_nodes() -> list[dict]:
    return [
        node("10.0.0.1", "controlplane", "etcd"),
        node("10.0.0.2", "worker"),
        node("10.0.0.3", "worker"),
    ]


def rejected(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        ClusterSpec(**fields)
    return str(info.value)


def test_defaults_and_identity():
    spec = ClusterSpec(name="web", nodes=three_nodes())
    assert spec.environment == "default"
    assert spec.cluster_name == "default-web"
    assert spec.network_plugin == "canal"
    assert spec.etcd_snapshots.retention_count == 4
    assert spec.customer.namespace == "customer"


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [["controlplane", "etcd", "worker"]]),
        (2, [["controlplane", "etcd", "worker"], ["worker"]]),
        (3, [["controlplane", "etcd"], ["worker"], ["worker"]]),
        (4, [["controlplane", "etcd"]] + [["worker"]] * 3),
        (5, [["controlplane", "etcd"]] * 3 + [["worker"]] * 2),
    ],
)
def test_hosts_shorthand(count, expected):
    spec = ClusterSpec(name="web", hosts=[f"10.0.0.{i}" for i in range(1, count + 1)])
    assert [n.roles for n in spec.nodes] == expected
    assert spec.hosts is None


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"hosts": ["10.0.0.1"], "nodes": three_nodes()}, "either hosts"),
        ({}, "nodes is required"),
        ({"nodes": three_nodes(), "surprise": 1}, "Extra inputs are not permitted"),
        (
            {"nodes": [node("10.0.0.1", "controlplane", "etcd", "worker")] * 2},
            "address '10.0.0.1' appears twice",
        ),
        (
            {
                "nodes": [
                    node("a.example", "controlplane", "etcd", "worker", hostname_override="n1"),
                    node("b.example", "worker", hostname_override="n1"),
                ]
            },
            "hostname 'n1' appears twice",
        ),
        ({"nodes": [node("10.0.0.1", "controlplane", "worker")]}, "no node has the etcd role"),
        (
            {
                "nodes": [
                    node("10.0.0.1", "etcd", "controlplane"),
                    node("10.0.0.2", "etcd", "worker"),
                ]
            },
            "2 etcd nodes",
        ),
        ({"nodes": [node("10.0.0.1", "etcd", "worker")]}, "no node has the controlplane role"),
        ({"nodes": [node("10.0.0.1", "etcd", "controlplane")]}, "no node has the worker role"),
        ({"nodes": [node("10.0.0.1", "etcd", "boss")]}, "controlplane"),
        (
            {"nodes": [node("10.0.0.1;rm -rf /", "etcd", "controlplane", "worker")]},
            "neither an IP address nor a hostname",
        ),
        (
            {
                "nodes": [
                    node("10.0.0.1", "etcd", "controlplane", "worker", labels={"bad key!": "x"})
                ]
            },
            "label key",
        ),
        (
            {"nodes": [node("10.0.0.1", "etcd", "controlplane", "worker", labels={"tier": "-x"})]},
            "label tier",
        ),
        (
            {
                "nodes": [
                    node(
                        "10.0.0.1",
                        "etcd",
                        "controlplane",
                        "worker",
                        taints=[{"key": "k", "effect": "Sometimes"}],
                    )
                ]
            },
            "NoSchedule",
        ),
        ({"nodes": three_nodes(), "environment": "prod-eu"}, "no dashes"),
        ({"nodes": three_nodes(), "name": "Web_1"}, "DNS-1123 label"),
        ({"nodes": three_nodes(), "kubernetes_version": "1.30"}, "not an RKE version"),
        (
            {
                "nodes": three_nodes(),
                "etcd_snapshots": {"interval_hours": 12, "retention_hours": 6},
            },
            "retention_hours",
        ),
    ],
)
def test_rejections_name_the_field_and_the_fix(fields, needle):
    fields = {"name": "web", **fields}
    assert needle in rejected(**fields)


def test_version_resolution():
    spec = ClusterSpec(name="web", nodes=three_nodes())
    assert spec.with_version(SUPPORTED, SUPPORTED[-1]).kubernetes_version == "v1.30.5-rancher1-1"
    old = ClusterSpec(name="web", nodes=three_nodes(), kubernetes_version="v1.18.3-rancher1-1")
    with pytest.raises(SpecError, match="choose one of v1.29.9-rancher1-1"):
        old.with_version(SUPPORTED, SUPPORTED[-1])
    weave = ClusterSpec(name="web", nodes=three_nodes(), network_plugin="weave")
    with pytest.raises(SpecError, match="weave"):
        weave.with_version(SUPPORTED, SUPPORTED[-1])
    assert weave.with_version(SUPPORTED, SUPPORTED[0]).network_plugin == "weave"


def test_spec_hash_is_stable_and_sensitive():
    a = ClusterSpec(name="web", hosts=["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    b = ClusterSpec(name="web", nodes=[n.model_dump() for n in a.nodes])
    assert a.spec_hash() == b.spec_hash()
    c = ClusterSpec(name="web", hosts=["10.0.0.1", "10.0.0.2", "10.0.0.4"])
    assert c.spec_hash() != a.spec_hash()
