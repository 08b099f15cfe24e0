"""Flow teardown-cluster: rke remove --force, check the nodes for leftovers, delete the customer
kubeconfig, archive the state."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import State

from cluster_mgmt.atomic import atomic_write
from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.leftovers import (
    VERIFICATION_FILE,
    NodeLeftovers,
    summary,
    verification_document,
)
from cluster_mgmt.operations import recorded_config
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.policy import Decision
from cluster_mgmt.spec import ClusterName, Environment
from cluster_mgmt.state import ClusterNotFoundError, ClusterState, Status
from flows.operation import (
    Settings,
    check_cluster_nodes,
    check_policy,
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    load_settings,
    report_failure,
    run_rke_step,
)
from tasks.kube import delete_customer_kubeconfig
from tasks.locks import remove_cluster_lock
from tasks.preflight import find_leftovers
from tasks.reporting import emit_cluster_event, update_cluster_artifact


class TeardownError(ClusterMgmtError):
    """Teardown stopped; the message says why and what to do."""


@flow(name="teardown-cluster", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def teardown_cluster(
    environment: Environment,
    name: ClusterName,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
    policy: BlockName = "default",
) -> State:
    """Remove a cluster from its nodes with `rke remove --force`, delete the customer
    kubeconfig (Secret block `kubeconfig-<env>-<name>` and file) and archive its state.

    Unreachable nodes do not stop the teardown (RKE skips them); a node whose host key
    changed or that refuses the key does. After the remove every node is asked what RKE left
    (containers, files in its directories); leftovers and nodes that could not be checked
    are named in the status message, the artifact and `teardown-verification.json` in the
    archived directory, and the teardown still ends DELETED.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    settings = load_settings(ssh_access, state_volume, rke_settings)
    volume = settings.volume
    decision = check_policy(
        policy, "rke-cluster-teardown", volume, environment, name, {}, Operation.TEARDOWN
    )
    volume.check_usable()
    run_id = current_run_id()

    # Every check of the cluster's files happens under its lock: a concurrent teardown may
    # have archived it meanwhile (then this one finds no cluster and creates nothing).
    try:
        with cluster_operation(volume, environment, name, Operation.TEARDOWN) as cluster:
            status, archived = _remove(cluster, settings, decision, run_id)
    except ClusterNotFoundError:
        remove_cluster_lock(environment, name)  # re-made by this run while it waited
        raise
    remove_cluster_lock(environment, name)
    return finished(cluster, status, archive=str(archived))


def _remove(
    cluster: ClusterState, settings: Settings, decision: Decision, run_id: str
) -> tuple[Status, Path]:
    """Preflight, `rke remove --force`, host keys checked again, leftovers, DELETED, archive."""
    logger = get_run_logger()
    config_text, config = recorded_config(cluster)
    cluster.record_decision(Operation.TEARDOWN, decision.to_dict())
    targets, report = check_cluster_nodes(cluster, settings, config, unreachable_ok=True)
    outcome = run_rke_step(
        settings,
        cluster,
        "remove",
        config_text,
        targets=targets,
        rows=report.rows(),
        operation=Operation.TEARDOWN,
        phase=Phase.DELETING,
        message="running rke remove",
        error=TeardownError,
        retry="run teardown again",
    )
    leftovers = find_leftovers(targets, settings.access, cluster.read_text("known_hosts") or "")
    for node in leftovers:
        if node.result != "clean":
            logger.warning("Node %s after rke remove: %s", node.node, node.row())

    delete_customer_kubeconfig(cluster)  # its Secret block and file: the token is dead
    message = f"{outcome.summary}; {summary(leftovers)}"
    cluster.write_status(Phase.DELETED, Operation.TEARDOWN, run_id, message)
    update_cluster_artifact(cluster, nodes=report.rows(), detail=_verification(leftovers))
    status = cluster.read_status()
    archived = cluster.archive()
    atomic_write(archived / VERIFICATION_FILE, verification_document(leftovers))
    emit_cluster_event(cluster, "cluster.deleted", {"archive": archived.name})
    logger.info(
        "Cluster %s/%s removed; state archived at %s", cluster.environment, cluster.name, archived
    )
    return status, archived


def _verification(leftovers: list[NodeLeftovers]) -> str:
    """The artifact's teardown-verification section."""
    lines = ["## Teardown verification", "", summary(leftovers), ""]
    for row in (node.row() for node in leftovers):
        lines.append(
            f"- `{row['node']}`: {row['result']}; leftovers: {row['leftovers']}; "
            f"unverified: {row['unverified']}; rke helper containers: {row['rke_helpers']}"
        )
    return "\n".join(lines)
