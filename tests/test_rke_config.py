"""cluster.yml rendering follows RKE's schema (docs/rke.md §4)."""

from __future__ import annotations

from pathlib import Path

import yaml

from cluster_mgmt.rke_config import (
    config_changes,
    dump_cluster_config,
    render_cluster_config,
    with_key_path,
)
from cluster_mgmt.spec import ClusterSpec


def spec(**extra) -> ClusterSpec:
    nodes = [
        {
            "address": "10.0.0.1",
            "roles": ["controlplane", "etcd"],
            "port": 2222,
            "user": "ops",
            "labels": {"tier": "core"},
            "taints": [{"key": "dedicated", "value": "cp", "effect": "NoSchedule"}],
        },
        {
            "address": "10.0.0.2",
            "roles": ["worker"],
            "internal_address": "192.168.0.2",
            "hostname_override": "w1",
        },
    ]
    return ClusterSpec(environment="prod", name="web", nodes=nodes, **extra).with_version(
        ["v1.30.5-rancher1-1"], "v1.30.5-rancher1-1"
    )


def test_render_matches_rke_schema():
    config = render_cluster_config(spec(), ssh_user="rke")
    assert config["cluster_name"] == "prod-web"
    assert config["kubernetes_version"] == "v1.30.5-rancher1-1"
    assert config["network"] == {"plugin": "canal"}
    assert config["services"]["etcd"]["backup_config"] == {
        "enabled": True,
        "interval_hours": 6,
        "retention": 4,
    }
    first, second = config["nodes"]
    assert first == {
        "address": "10.0.0.1",
        "port": "2222",
        "user": "ops",
        "role": ["controlplane", "etcd"],
        "labels": {"tier": "core"},
        "taints": [{"key": "dedicated", "value": "cp", "effect": "NoSchedule"}],
    }
    assert second["user"] == "rke" and second["port"] == "22"
    assert second["internal_address"] == "192.168.0.2" and second["hostname_override"] == "w1"
    assert "ignore_docker_version" not in config  # the CLI flag is what counts
    assert "ssh_key" not in yaml.safe_dump(config).replace("ssh_key_path", "")


def test_disabled_snapshots_and_retention_rounding():
    off = render_cluster_config(spec(etcd_snapshots={"enabled": False}), ssh_user="rke")
    assert off["services"]["etcd"]["backup_config"] == {"enabled": False}
    odd = render_cluster_config(
        spec(etcd_snapshots={"interval_hours": 5, "retention_hours": 12}), ssh_user="rke"
    )
    assert odd["services"]["etcd"]["backup_config"]["retention"] == 3


def test_key_path_is_set_per_run_and_changes_are_named(tmp_path: Path):
    config = render_cluster_config(spec(), ssh_user="rke")
    text = with_key_path(dump_cluster_config(config), tmp_path / "id")
    assert yaml.safe_load(text)["ssh_key_path"] == str(tmp_path / "id")
    assert config_changes(text, config) == []
    moved = render_cluster_config(spec(network_plugin="calico"), ssh_user="rke")
    assert config_changes(text, moved) == ["network.plugin"]
