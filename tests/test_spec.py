"""ClusterSpec: every rejection names the field and the fix."""

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
            "label value '-x'",
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
        ({"nodes": three_nodes(), "kubernetes_version": "1.30"}, "an RKE version such as"),
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


def one_node(**extra) -> list[dict]:
    return [node("10.0.0.1", "controlplane", "etcd", "worker", **extra)]


def taint(key: str, value: str = "", effect: str = "NoSchedule") -> dict:
    return {"key": key, "value": value, "effect": effect}


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        # an IPv6 zone id is local to one host and would reach etcd's --initial-cluster
        ({"nodes": [node("fe80::1%eth0", "controlplane", "etcd", "worker")]}, "zone id"),
        ({"nodes": one_node(internal_address="fe80::2%eth0")}, "internal_address"),
        ({"nodes": one_node(internal_address="10.0.0.2,etcd-x=https://x")}, "internal_address"),
        ({"nodes": one_node(internal_address="10.0.0.2 ")}, "internal_address"),
        ({"nodes": [node(" 10.0.0.1", "controlplane", "etcd", "worker")]}, "address"),
        ({"nodes": [node("10.0.0.1\n", "controlplane", "etcd", "worker")]}, "address"),
        ({"nodes": [node("1.2.3.999", "controlplane", "etcd", "worker")]}, "address"),
        ({"nodes": [node("010.0.0.1", "controlplane", "etcd", "worker")]}, "address"),
        ({"nodes": [node("my_host", "controlplane", "etcd", "worker")]}, "address"),
        ({"hosts": ["10.0.0.1", "fe80::1%eth0"]}, "zone id"),
        ({"nodes": one_node(hostname_override="Node-1")}, "hostname_override"),
        ({"nodes": one_node(hostname_override="node_1")}, "hostname_override"),
        ({"nodes": one_node(hostname_override="a" * 254)}, "hostname_override"),
        ({"nodes": one_node(labels={"Example.com/tier": "web"})}, "label key"),
        ({"nodes": one_node(labels={"a/b/c": "web"})}, "label key"),
        ({"nodes": one_node(labels={"/tier": "web"})}, "label key"),
        ({"nodes": one_node(labels={"": "web"})}, "label key"),
        ({"nodes": one_node(labels={"x" * 64: "web"})}, "label key"),
        ({"nodes": one_node(labels={"a" * 254 + "/tier": "web"})}, "label key"),
        ({"nodes": one_node(labels={"tier": "x" * 64})}, "label value"),
        ({"nodes": one_node(labels={"tier": "web\n"})}, "label value"),
        ({"nodes": one_node(taints=[taint("bad key")])}, "taint key"),
        ({"nodes": one_node(taints=[taint("dedicated", "a b")])}, "taint value"),
        ({"nodes": one_node(taints=[taint("dedicated", "x", "noschedule")])}, "NoExecute"),
        ({"nodes": one_node(user="root\n")}, "user"),
        ({"nodes": three_nodes(), "name": "web\n"}, "name"),
        ({"nodes": three_nodes(), "environment": "prod\n"}, "environment"),
        # Python's \d also matches non-ASCII digits such as Arabic-Indic ones
        ({"nodes": three_nodes(), "kubernetes_version": "v\u0661.30.5-rancher1-1"}, "RKE version"),
        ({"nodes": three_nodes(), "customer": {"namespace": "Customer"}}, "customer.namespace"),
    ],
)
def test_kubernetes_and_address_rules(fields, needle):
    fields = {"name": "web", **fields}
    assert needle in rejected(**fields)


@pytest.mark.parametrize(
    "extra",
    [
        {"labels": {"tier": ""}},
        {"labels": {"example.com/tier": "Web_1.a-b"}},
        {"labels": {"a" * 253 + "/" + "n" * 63: "v" * 63}},
        {"labels": {"node-role.kubernetes.io/edge": "true", "X_y.z": "1"}},
        {"taints": [taint("dedicated"), taint("example.com/gpu", "yes", "NoExecute")]},
        {"hostname_override": "node-1.example.com"},
        {"internal_address": "192.168.1.10"},
        {"internal_address": "node-1.internal"},
        {"user": "rke_user-1"},
    ],
)
def test_kubernetes_rules_accept_what_kubernetes_accepts(extra):
    spec = ClusterSpec(name="web", nodes=one_node(**extra))
    for key, value in extra.items():
        dumped = spec.nodes[0].model_dump(mode="json")[key]
        assert dumped == value


def test_addresses_are_normalised():
    spec = ClusterSpec(name="web", hosts=["FE80::0001", "Node-2.Example.COM"])
    assert [n.address for n in spec.nodes] == ["fe80::1", "node-2.example.com"]
