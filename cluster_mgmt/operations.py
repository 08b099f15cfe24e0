"""What an operation must do to a cluster, decided from its state; the flows carry it out."""

from __future__ import annotations

from enum import StrEnum

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.phases import Phase
from cluster_mgmt.preflight import HostKeyPolicy
from cluster_mgmt.rke_config import config_changes
from cluster_mgmt.state import KNOWN_HOSTS, ClusterState, StateMissingError


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
            raise StateMissingError(cluster.known_elsewhere_message(witness))
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
