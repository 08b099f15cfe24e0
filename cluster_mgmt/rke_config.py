"""Render RKE's `cluster.yml` from a ClusterSpec (schema: docs/rke.md §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cluster_mgmt.spec import ClusterSpec, NodeSpec

HEADER = "# Rendered by cluster-mgmt; RKE runs it as is. Edit the ClusterSpec, not this file.\n"


def _node(node: NodeSpec, default_user: str) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "address": node.address,
        "port": str(node.port),  # RKE's node port is a string
        "user": node.user or default_user,
        "role": list(node.roles),
    }
    if node.internal_address:
        rendered["internal_address"] = node.internal_address
    if node.hostname_override:
        rendered["hostname_override"] = node.hostname_override
    if node.labels:
        rendered["labels"] = dict(node.labels)
    if node.taints:
        rendered["taints"] = [t.model_dump() for t in node.taints]
    return rendered


def render_cluster_config(spec: ClusterSpec, *, ssh_user: str) -> dict:
    """RKE's cluster configuration for `spec`, without a key: `with_key_path` adds the path of
    the run's key file (the key itself is never inlined).

    `ignore_docker_version` is deliberately absent: RKE's CLI flag always overrides the file's
    key (rancher/rke#2378), so the driver passes the flag instead.
    """
    if spec.kubernetes_version is None:
        raise ValueError("resolve the Kubernetes version (ClusterSpec.with_version) first")
    snapshots = spec.etcd_snapshots
    backup: dict[str, Any] = {"enabled": snapshots.enabled}
    if snapshots.enabled:
        backup |= {
            "interval_hours": snapshots.interval_hours,
            "retention": snapshots.retention_count,
        }
    return {
        "cluster_name": spec.cluster_name,
        "kubernetes_version": spec.kubernetes_version,
        "nodes": [_node(n, ssh_user) for n in spec.nodes or []],
        "network": {"plugin": spec.network_plugin},
        "services": {"etcd": {"backup_config": backup}},
    }


def dump_cluster_config(config: dict) -> str:
    """YAML text of a cluster configuration, keys in a readable order."""
    return HEADER + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def with_key_path(config_text: str, ssh_key_path: Path) -> str:
    """A stored cluster.yml pointing at this run's key file (the path changes every run)."""
    config = yaml.safe_load(config_text)
    if not isinstance(config, dict) or not config.get("nodes"):
        raise ValueError("cluster.yml is not an RKE cluster configuration with nodes")
    config["ssh_key_path"] = str(ssh_key_path)
    return dump_cluster_config(config)


def config_changes(old_text: str, new: dict) -> list[str]:
    """Dotted paths whose values differ between a stored cluster.yml and a new rendering."""
    old = yaml.safe_load(old_text) or {}
    ignored = {"ssh_key_path"}
    return [p for p in diff_configs(old, new) if p not in ignored]


def diff_configs(old: Any, new: Any) -> list[str]:
    """Dotted paths (`network.plugin`, `nodes[2].role`) whose values differ."""
    return _diff(old, new, "")


def _diff(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [d for k in keys for d in _diff(old.get(k), new.get(k), f"{path}.{k}".lstrip("."))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in _diff(a, b, f"{path}[{i}]")
        ]
    return [] if old == new else [path or "(root)"]
