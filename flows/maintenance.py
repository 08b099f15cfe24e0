"""What the day-2 flows that keep a cluster's spec share: policy, state and node checks.

rotate-certificates, snapshot-etcd and restore-etcd run rke on an existing cluster from its
recorded cluster.yml and cluster.rkestate; each checks, under the cluster's lock and before
any node is touched, that those files are there, then the nodes' host keys (rke ignores them).
"""

from __future__ import annotations

from typing import Any

import yaml
from prefect import get_run_logger

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.phases import Operation
from cluster_mgmt.policy import MAINTENANCE, Decision
from cluster_mgmt.preflight import NodeTarget, PreflightReport
from cluster_mgmt.state import CLUSTER_YML, RKESTATE, ClusterState, StateVolume
from cluster_mgmt.state_files import is_rkestate
from flows.operation import (
    Settings,
    check_policy,
    node_targets,
    preflight_failure,
    preflight_nodes,
)


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


def recorded_config(cluster: ClusterState) -> tuple[str, dict[str, Any]]:
    """The cluster.yml rke last ran (text and parsed), or RefusedError."""
    text = cluster.read_text(CLUSTER_YML)
    config = yaml.safe_load(text) if text else None
    if not isinstance(config, dict) or not config.get("nodes"):
        raise RefusedError(
            f"cluster {cluster.environment}/{cluster.name} has no usable cluster.yml on the state "
            "volume: it was never provisioned, so there is nothing rke could act on; check the "
            "environment and name"
        )
    return text, config


def require_state(cluster: ClusterState, what: str) -> None:
    """RefusedError unless cluster.rkestate is complete RKE state: `what` needs the cluster's
    CA and certificates, and without them rke would act on (or mint) the wrong ones."""
    data = cluster.read_text(RKESTATE)
    if data is not None and is_rkestate(data.encode()):
        return
    problem = "is missing" if data is None else "is not complete RKE state"
    copy = cluster.newest_history_copy(RKESTATE)
    hint = f" (newest history copy: {copy})" if copy else ""
    raise RefusedError(
        f"refusing to {what} cluster {cluster.environment}/{cluster.name}: its "
        f"{cluster.path(RKESTATE)} {problem}, and rke needs the cluster's state for it. Recover "
        f"the state first with recover-cluster-state{hint}, or by hand as the operations guide "
        "describes, then retry"
    )


def etcd_addresses(config: dict[str, Any]) -> list[str]:
    """The etcd nodes' addresses in a cluster.yml."""
    return [n["address"] for n in config["nodes"] if "etcd" in (n.get("role") or [])]


def check_cluster_nodes(
    cluster: ClusterState,
    settings: Settings,
    config: dict[str, Any],
    *,
    unreachable_ok: bool = False,
) -> tuple[list[NodeTarget], PreflightReport]:
    """Every node's host key, login and Docker checked before rke runs; RefusedError naming
    the nodes that failed. `unreachable_ok`: a node that does not answer is only a warning."""
    logger = get_run_logger()
    targets = node_targets(config, settings.access.user)
    report, why = preflight_nodes(
        settings, cluster, targets, config.get("kubernetes_version", ""), retry_unreachable=False
    )
    refused = [n for n in report.failures if n.reachable or not unreachable_ok]
    if refused:
        raise RefusedError(preflight_failure(refused, why))
    for node in report.failures:
        logger.warning("Node %s is unreachable; rke will skip it: %s", node.address, node.error)
    return targets, report
