"""What an operation must do to a cluster, decided from its state; the flows carry it out."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import yaml

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.phases import Phase
from cluster_mgmt.preflight import HostKeyPolicy, NodeReport, PreflightReport
from cluster_mgmt.rke_config import config_changes
from cluster_mgmt.state import (
    CLUSTER_YML,
    KNOWN_HOSTS,
    RKESTATE,
    ClusterState,
    StateLostError,
)
from cluster_mgmt.state_files import is_rkestate


class ProvisionStep(StrEnum):
    """What `provision-cluster` must do for a request."""

    NOTHING_TO_DO = "nothing to do"  # READY with this very spec
    CREATE = "create"  # RKE never wrote state for it: a first provision (or a retry of one)
    RESUME = "resume"  # RKE wrote state, the run failed or was interrupted: run rke up again


def provision_step(
    cluster: ClusterState, spec_hash: str, config: dict, witness: str | None
) -> ProvisionStep:
    """The step a provision of `config` (hash `spec_hash`) must take, or why it is refused.

    `witness` is what an independent record (the Prefect API) says about the cluster being
    live; with no state on the volume it makes the provision a refusal, never a new CA.
    """
    if not cluster.rke_state_written():
        if witness:
            raise StateLostError(cluster.known_elsewhere_message(witness))
        return ProvisionStep.CREATE
    status = cluster.read_status()
    if (status.spec_hash if status else None) != spec_hash:
        stored = cluster.read_text("cluster.yml") or ""
        changed = ", ".join(config_changes(stored, config)) or "settings outside cluster.yml"
        raise RefusedError(
            f"cluster {cluster.environment}/{cluster.name} exists with a different spec "
            f"(changed: {changed}); apply the change with update-cluster (plan-cluster shows "
            "what it would do), or provision again with the original spec"
        )
    cluster.ensure_state_intact()
    if status is not None and status.phase == Phase.READY:
        return ProvisionStep.NOTHING_TO_DO
    return ProvisionStep.RESUME


def host_key_policy(cluster: ClusterState, policy: HostKeyPolicy) -> tuple[HostKeyPolicy, str]:
    """The policy to check the cluster's nodes with, and why it differs from the block's.

    accept-new trusts the first key seen. For a cluster that existed, a lost known_hosts
    would silently restart that trust: then only keys known already are accepted.
    """
    if policy is not HostKeyPolicy.ACCEPT_NEW or not cluster.rke_state_written():
        return policy, ""
    if (cluster.read_text(KNOWN_HOSTS) or "").strip():
        return policy, ""
    copy = cluster.newest_history_copy(KNOWN_HOSTS)
    restore = f"restore it from {copy}" if copy else "no history copy of it exists"
    return HostKeyPolicy.REJECT, (
        f"accept-new is not applied: cluster {cluster.environment}/{cluster.name} existed and "
        f"its known_hosts is missing, so a new key could be anyone's; {restore}, or add the "
        "nodes' keys to the node-ssh-access block's known_hosts"
    )


def recorded_config(cluster: ClusterState) -> tuple[str, dict[str, Any]]:
    """The cluster.yml rke last ran (text and parsed): what teardown and the day-2 operations
    run rke with. RefusedError when there is none to act on."""
    text = cluster.read_text(CLUSTER_YML)
    try:
        config = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        config = None
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


def preflight_failure(failures: list[NodeReport] | tuple[NodeReport, ...], why: str | None) -> str:
    """The one-line refusal for nodes that failed their preflight (`why`: why the host-key
    policy was tightened, if it was)."""
    reasons = "; ".join(f"{n.address}: {n.error}" for n in failures)
    return f"preflight failed, no node was changed: {reasons}" + (f" ({why})" if why else "")


def skipped_nodes(
    report: PreflightReport, why: str | None, *, unreachable_ok: bool
) -> list[NodeReport]:
    """The nodes rke will skip, or why the operation is refused (RefusedError).

    A node that answered and failed (host key, login, Docker) always refuses the operation.
    A node that did not answer refuses it too, unless the operation may go on without it
    (`unreachable_ok`: teardown and snapshots, which rke runs on the nodes it reaches).
    """
    refused = [n for n in report.failures if n.reachable or not unreachable_ok]
    if refused:
        raise RefusedError(preflight_failure(refused, why))
    return list(report.failures)
