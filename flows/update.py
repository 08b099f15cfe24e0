"""Flow update-cluster: policy → plan (refusals) → preflight of new nodes → rke up → configure."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import State

from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.operations import preflight_failure
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.rke_config import dump_cluster_config
from cluster_mgmt.spec import ClusterSpec
from flows.configure import configure
from flows.operation import (
    Settings,
    check_policy,
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    load_settings,
    node_targets,
    preflight_nodes,
    report_failure,
    run_rke_step,
)
from flows.plan import make_plan, resolve_version
from tasks.reporting import emit_cluster_event, update_cluster_artifact


class UpdateError(ClusterMgmtError):
    """An update stopped; the message says why and what to do."""


@flow(name="update-cluster", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def update_cluster(
    spec: ClusterSpec,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
    policy: BlockName = "default",
) -> State:
    """Apply a changed spec to an existing cluster with `rke up`.

    Workers may come and go freely; control-plane and etcd nodes change one per update, etcd
    keeps its quorum and an odd size; Kubernetes upgrades one minor at a time; the network
    plugin never changes. Every refusal (see plan-cluster) comes before any node is touched.
    An update that failed or was interrupted is resumed by running it again.

    Args:
        spec: The cluster as it should become (a version left out keeps the cluster's).
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    logger = get_run_logger()
    settings = load_settings(ssh_access, state_volume, rke_settings)
    volume = settings.volume
    spec = resolve_version(spec, settings.rke, volume.cluster(spec.environment, spec.name))
    decision = check_policy(
        policy,
        "rke-cluster",
        volume,
        spec.environment,
        spec.name,
        spec.model_dump(mode="json"),
        Operation.UPDATE,
    )
    volume.check_usable()
    if not volume.cluster(spec.environment, spec.name).rke_state_written():
        raise RefusedError(
            f"cluster {spec.environment}/{spec.name} does not exist (RKE never wrote state for "
            "it): create it with provision-cluster"
        )
    with cluster_operation(volume, spec.environment, spec.name, Operation.UPDATE) as cluster:
        cluster.record_decision(Operation.UPDATE, decision.to_dict())
        cluster.ensure_state_intact()  # never let rke mint a new CA
        plan, config = make_plan(cluster, spec, settings.rke, settings.access.user)
        if not plan.allowed:
            raise RefusedError(
                f"update of {spec.environment}/{spec.name} refused, no node was touched: "
                + "; ".join(plan.refusals)
            )
        run_id, spec_hash = current_run_id(), spec.spec_hash()
        if not plan.has_changes and not plan.resume:
            logger.info("%s", plan.summary())
            status = cluster.read_status()
            if status is not None and status.spec_hash != spec_hash:  # the same cluster, said anew
                cluster.write_status(Phase.READY, Operation.UPDATE, run_id, "no changes", spec_hash)
            return finished(cluster, plan=plan.summary())
        logger.info("Update plan: %s", plan.summary())
        detail = ""
        rows: list[dict] = []
        if plan.needs_rke:
            detail, rows = _rke_up(settings, cluster, spec, config, plan.new_or_changed, spec_hash)
        configured = configure(cluster, Operation.UPDATE, spec.customer)
        message = f"{plan.summary()}; {detail + '; ' if detail else ''}{configured}"
        cluster.write_status(Phase.READY, Operation.UPDATE, run_id, message, spec_hash)
        update_cluster_artifact(cluster, nodes=rows or None, detail=detail)
        emit_cluster_event(
            cluster,
            "cluster.updated",
            {
                "kubernetes_version": spec.kubernetes_version,
                "nodes": len(spec.nodes or []),
                "added": [r["address"] for r in plan.add],
                "removed": [r["address"] for r in plan.remove],
            },
        )
        logger.info("Cluster %s is READY: %s", spec.cluster_name, plan.summary())
        return finished(cluster, plan=plan.summary())


def _rke_up(
    settings: Settings,
    cluster,
    spec: ClusterSpec,
    config: dict,
    to_check: list[str],
    spec_hash: str,
) -> tuple[str, list[dict]]:
    """UPDATING: preflight of the new and changed nodes, `rke up`, host keys checked again.
    Returns rke's summary and the preflight rows."""
    run_id = current_run_id()
    targets = node_targets(config, settings.access.user)
    checked = [t for t in targets if t.address in set(to_check)]
    cluster.write_status(
        Phase.UPDATING, Operation.UPDATE, run_id, "checking new and changed nodes", spec_hash
    )
    update_cluster_artifact(cluster)
    rows: list[dict] = []
    if checked:
        report, why = preflight_nodes(settings, cluster, checked, spec.kubernetes_version)
        rows = report.rows()
        if not report.ok:
            update_cluster_artifact(cluster, nodes=rows)
            raise UpdateError(preflight_failure(report.failures, why))
    outcome = run_rke_step(
        settings,
        cluster,
        "up",
        dump_cluster_config(config),
        targets=targets,
        rows=rows,
        operation=Operation.UPDATE,
        phase=Phase.UPDATING,
        message="running rke up",
        spec_hash=spec_hash,
        error=UpdateError,
        retry="run update again: it resumes",
        label=Operation.UPDATE,
    )
    return outcome.summary, rows
