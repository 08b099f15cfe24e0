"""Task: SSH preflight of every node before RKE touches them."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.ssh import NodeSshAccess
from cluster_mgmt.preflight import NodeTarget, PreflightReport, preflight
from cluster_mgmt.spec import ClusterSpec


def node_targets(spec: ClusterSpec, default_user: str) -> list[NodeTarget]:
    """Where and as whom to log in to each node of `spec`."""
    return [NodeTarget(n.address, n.port, n.user or default_user) for n in spec.nodes or []]


@task(name="ssh-preflight", cache_policy=NO_CACHE)
def check_nodes(
    targets: list[NodeTarget],
    access: NodeSshAccess,
    recorded_known_hosts: str,
    kubernetes_version: str,
    ignore_docker_version: bool,
) -> PreflightReport:
    """Check every node concurrently: reachable, host key trusted, login, Docker version.

    Args:
        targets: The nodes to check.
        access: The `node-ssh-access` block (key, trusted host keys, policy, timeout).
        recorded_known_hosts: Host keys already recorded for this cluster.
        kubernetes_version: The cluster's version, which decides the Docker versions allowed.
        ignore_docker_version: Skip the Docker version check, as RKE's flag does.

    Returns:
        A per-node report; the caller stops if any node failed.
    """
    return preflight(
        targets,
        private_key=access.private_key.get_secret_value(),
        known_hosts=access.known_hosts,
        recorded_known_hosts=recorded_known_hosts,
        policy=access.policy,
        kubernetes_version=kubernetes_version,
        ignore_docker_version=ignore_docker_version,
        connect_timeout=access.connect_timeout_seconds,
    )
