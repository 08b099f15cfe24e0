"""Flows snapshot-etcd and restore-etcd: `rke etcd snapshot-save` / `snapshot-restore`."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from cluster_mgmt.customer import has_recorded_access
from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.operations import recorded_config, require_state
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.redact import redact
from cluster_mgmt.snapshots import (
    SnapshotName,
    SnapshotRecord,
    check_known_name,
    check_new_name,
    default_snapshot_name,
    record_snapshot,
)
from cluster_mgmt.spec import ClusterName, Environment
from cluster_mgmt.state import StateVolume
from flows.configure import configure
from flows.maintenance import etcd_addresses, maintenance_policy
from flows.operation import (
    Settings,
    check_cluster_nodes,
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    load_settings,
    report_failure,
    run_rke_step,
)
from tasks.reporting import emit_event_for, update_cluster_artifact
from tasks.snapshots import read_snapshot_sizes


class SnapshotFailedError(RefusedError):
    """rke could not take the snapshot. The cluster itself was not changed, so its phase
    stays as it was (a cluster that merely missed a backup is not FAILED)."""


class RestoreError(ClusterMgmtError):
    """rke could not restore the snapshot; the message says why."""


class SweepError(ClusterMgmtError):
    """Some clusters of an environment could not be snapshotted; the message lists them."""


@flow(name="snapshot-etcd", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def snapshot_etcd(
    environment: Environment,
    name: ClusterName | None = None,
    snapshot_name: SnapshotName | None = None,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
    policy: BlockName = "default",
) -> State:
    """Take a named etcd snapshot with `rke etcd snapshot-save` and record it in the cluster's
    snapshots.json (listed in its artifact).

    Without `name`, every READY cluster of the environment is snapshotted, one after another,
    each under its own lock: one schedule per environment backs up all its clusters. A cluster
    that fails does not stop the others; the run then fails listing them.

    Args:
        environment: The clusters' environment.
        name: One cluster's name; empty: every READY cluster of the environment.
        snapshot_name: The snapshot's name; empty: `snapshot-<UTC time>`.
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    logger = get_run_logger()
    snapshot_name = snapshot_name or default_snapshot_name()
    settings = load_settings(ssh_access, state_volume, rke_settings)
    volume = settings.volume
    if name is not None:
        _snapshot_one(settings, policy, environment, name, snapshot_name, sweep=False)
        return finished(volume.cluster(environment, name), snapshot=snapshot_name)

    volume.check_usable()  # an unmounted volume must not pass for an environment without clusters
    names = _ready_clusters(volume, environment)
    if not names:
        logger.warning("No READY cluster in environment %s: nothing to snapshot", environment)
    logger.info("Snapshot %s of %d READY cluster(s) in %s", snapshot_name, len(names), environment)
    failed = {}
    for each in names:
        try:
            logger.info(
                "%s/%s: %s",
                environment,
                each,
                _snapshot_one(settings, policy, environment, each, snapshot_name, sweep=True),
            )
        except Exception as exc:  # noqa: BLE001 - one cluster's trouble never stops the others
            reason = redact(str(exc) if isinstance(exc, ClusterMgmtError) else repr(exc))
            failed[each] = reason
            logger.error("%s/%s: %s", environment, each, reason)
            emit_event_for(
                environment,
                each,
                "cluster.operation.failed",
                {"operation": "snapshot-etcd", "message": reason},
            )
    if failed:
        listed = "; ".join(f"{n}: {m}" for n, m in failed.items())
        raise SweepError(
            f"snapshot {snapshot_name} failed for {len(failed)} of {len(names)} cluster(s) in "
            f"{environment}: {listed}"
        )
    message = f"snapshot {snapshot_name} of {len(names)} cluster(s) in {environment}"
    return Completed(
        message=message,
        data={
            "environment": environment,
            "snapshot": snapshot_name,
            "clusters": names,
            "message": message,
        },
    )


def _ready_clusters(volume: StateVolume, environment: str) -> list[str]:
    """Names of the environment's clusters whose status says READY (read without a lock: each
    is checked again under its own)."""
    names = []
    for cluster in volume.clusters(environment):
        try:
            status = cluster.read_status()
        except ClusterMgmtError:
            continue  # a damaged status is reported by the operations that need it
        if status is not None and status.phase == Phase.READY:
            names.append(cluster.name)
    return names


def _snapshot_one(
    settings: Settings,
    policy: str,
    environment: str,
    name: str,
    snapshot_name: str,
    *,
    sweep: bool,
) -> str:
    """Policy, lock, checks, `rke etcd snapshot-save`, record; a one-line summary."""
    volume = settings.volume
    decision = maintenance_policy(
        policy, volume, environment, name, Operation.SNAPSHOT_ETCD, {"snapshot_name": snapshot_name}
    )
    volume.check_usable()
    run_id = current_run_id()
    with cluster_operation(volume, environment, name, Operation.SNAPSHOT_ETCD) as cluster:
        cluster.record_decision(Operation.SNAPSHOT_ETCD, decision.to_dict())
        status = cluster.read_status()
        if sweep and (status is None or status.phase != Phase.READY):
            return f"skipped: no longer READY ({status.phase if status else 'no status'})"
        config_text, config = recorded_config(cluster)
        check_new_name(cluster, snapshot_name)
        targets, report = check_cluster_nodes(cluster, settings, config, unreachable_ok=True)
        taken_at = datetime.now(UTC).isoformat(timespec="seconds")
        outcome = run_rke_step(
            settings,
            cluster,
            "snapshot",
            config_text,
            targets=targets,
            rows=report.rows(),
            operation=Operation.SNAPSHOT_ETCD,
            phase=None,  # a snapshot changes nothing: the cluster's phase stays
            error=SnapshotFailedError,
            retry="take it again",
            label=Operation.SNAPSHOT_ETCD,
            name=snapshot_name,
        )
        etcd = etcd_addresses(config)
        sizes = read_snapshot_sizes(
            [t for t in targets if t.address in etcd],
            snapshot_name,
            settings.access,
            cluster.read_text("known_hosts") or "",
        )
        record_snapshot(cluster, SnapshotRecord(snapshot_name, taken_at, etcd, run_id, sizes))
        message = f"snapshot {snapshot_name} taken: {outcome.summary}"
        phase = status.phase if status else Phase.READY
        cluster.write_status(phase, Operation.SNAPSHOT_ETCD, run_id, message)
        update_cluster_artifact(cluster, nodes=report.rows())
        return message


@flow(name="restore-etcd", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def restore_etcd(
    environment: Environment,
    name: ClusterName,
    snapshot_name: SnapshotName,
    require_recorded: bool = True,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
    policy: BlockName = "default",
) -> State:
    """Restore a cluster's etcd from a snapshot with `rke etcd snapshot-restore`, then
    configure it again (customer access, managed resources).

    rke wipes the nodes, restores etcd on every etcd node and runs a full `rke up`; the
    cluster is UPDATING meanwhile and READY once configured. It needs the cluster's state
    (cluster.rkestate): without it the run is refused before any node is touched.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        snapshot_name: The snapshot to restore (see the cluster's artifact).
        require_recorded: Refuse a snapshot not recorded in the cluster's snapshots.json;
            false restores one of RKE's own recurring snapshots by name.
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    logger = get_run_logger()
    settings = load_settings(ssh_access, state_volume, rke_settings)
    volume = settings.volume
    decision = maintenance_policy(
        policy, volume, environment, name, Operation.RESTORE_ETCD, {"snapshot_name": snapshot_name}
    )
    volume.check_usable()
    run_id = current_run_id()
    with cluster_operation(volume, environment, name, Operation.RESTORE_ETCD) as cluster:
        cluster.record_decision(Operation.RESTORE_ETCD, decision.to_dict())
        config_text, config = recorded_config(cluster)
        require_state(cluster, "restore etcd of")
        if require_recorded:
            check_known_name(cluster, snapshot_name)
        targets, report = check_cluster_nodes(cluster, settings, config)
        outcome = run_rke_step(
            settings,
            cluster,
            "restore",
            config_text,
            targets=targets,
            rows=report.rows(),
            operation=Operation.RESTORE_ETCD,
            phase=Phase.UPDATING,
            message=f"restoring snapshot {snapshot_name}",
            error=RestoreError,
            retry="restore again",
            label=Operation.RESTORE_ETCD,
            name=snapshot_name,
        )
        message = f"restored snapshot {snapshot_name}: {outcome.summary}"
        if has_recorded_access(cluster):
            message += f"; {configure(cluster, Operation.RESTORE_ETCD)}"
        cluster.write_status(Phase.READY, Operation.RESTORE_ETCD, run_id, message)
        update_cluster_artifact(cluster, nodes=report.rows(), detail=outcome.summary)
        logger.info("Cluster %s/%s: %s", environment, name, message)
        return finished(cluster, snapshot=snapshot_name)
