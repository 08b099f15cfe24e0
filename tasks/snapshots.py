"""Task: how large an etcd snapshot is on each etcd node (over SSH, host keys verified)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks import NodeSshAccess
from cluster_mgmt.node_shell import NodeAccess
from cluster_mgmt.preflight import NodeTarget
from cluster_mgmt.snapshots import snapshot_sizes


@task(name="read-snapshot-sizes", cache_policy=NO_CACHE)
def read_snapshot_sizes(
    targets: list[NodeTarget], name: str, access: NodeSshAccess, recorded_known_hosts: str
) -> dict[str, int | None]:
    """Size in bytes of snapshot `name` on each of `targets` (None where it cannot be read).

    Args:
        targets: The etcd nodes.
        name: The snapshot's name.
        access: The `node-ssh-access` block (key, trusted host keys, timeout).
        recorded_known_hosts: Host keys already recorded for this cluster.
    """
    node_access = NodeAccess(
        private_key=access.private_key.get_secret_value(),
        known_hosts=access.known_hosts,
        recorded_known_hosts=recorded_known_hosts,
        connect_timeout=access.connect_timeout_seconds,
    )
    return snapshot_sizes(targets, name, node_access, timeout=access.connect_timeout_seconds)
