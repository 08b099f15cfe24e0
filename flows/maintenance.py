"""What the day-2 flows that keep a cluster's spec share: policy, state and node checks.

rotate-certificates, snapshot-etcd and restore-etcd run rke on an existing cluster from its
recorded cluster.yml and cluster.rkestate; each checks, under the cluster's lock and before
any node is touched, that those files are there (`cluster_mgmt.operations.recorded_config`,
`require_state`), then the nodes (`flows.operation.check_cluster_nodes`).
"""

from __future__ import annotations

from typing import Any

from cluster_mgmt.phases import Operation
from cluster_mgmt.policy import MAINTENANCE, Decision
from cluster_mgmt.state import StateVolume
from flows.operation import check_policy


def maintenance_policy(
    policy: str,
    volume: StateVolume,
    environment: str,
    name: str,
    operation: Operation,
    parameters: dict[str, Any],
) -> Decision:
    """validate-policy of kind `rke-cluster-maintenance` (the parameters hold no secret)."""
    spec = {"operation": str(operation), "parameters": parameters}
    return check_policy(policy, MAINTENANCE, volume, environment, name, spec, operation)


def etcd_addresses(config: dict[str, Any]) -> list[str]:
    """The etcd nodes' addresses in a cluster.yml."""
    return [n["address"] for n in config["nodes"] if "etcd" in (n.get("role") or [])]
