"""verify-backups: a restore drill of every cluster's backups (deployment weekly).

Read-only: it takes no cluster lock and writes nothing on the volume. Each cluster's newest
history copy is restored to a scratch directory and checked against the live cluster, and its
newest etcd snapshot is fetched from an etcd node and checked. A failed drill emits
`cluster.backup.failed`; the table artifact `backups-<env or all>` lists every cluster.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from blocks import ClusterStateVolume, NodeSshAccess
from blocks.loading import BlockNotFoundError, load_block
from cluster_mgmt.backups import DrillSettings
from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.identity import EnvironmentFilter
from cluster_mgmt.node_shell import NodeAccess
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.preflight import load_private_key
from cluster_mgmt.redact import register_secret
from flows.operation import install_redaction
from tasks.backups import drill_backups, publish_backup_report, report_key


@flow(name="verify-backups")
def verify_backups(
    environment: EnvironmentFilter | None = None,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    timeout_seconds: float = 1800.0,
    concurrency: int = 8,
) -> State:
    """Drill the backups of every cluster (of `environment`, or all).

    Args:
        environment: Only this environment's clusters; all when omitted.
        ssh_access: Name of the `node-ssh-access` block (to read etcd snapshots on nodes).
        state_volume: Name of the `cluster-state-volume` block.
        timeout_seconds: The whole drill's time limit; clusters not done by then fail.
        concurrency: Clusters drilled at once.
    """
    install_redaction()
    try:
        if not 0 < timeout_seconds <= 86400 or not 1 <= concurrency <= 64:
            raise ValueError("timeout_seconds must be in (0, 86400] and concurrency in [1, 64]")
        access = load_block(NodeSshAccess, ssh_access)
        key = access.private_key.get_secret_value()
        register_secret(key)
        load_private_key(key)
        volume = load_block(ClusterStateVolume, state_volume).volume()
        volume.check_usable()
        volume.clusters(environment)  # an invalid environment fails here
    except (ValueError, ClusterMgmtError, BlockNotFoundError) as exc:
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc))
    settings = DrillSettings(
        access=NodeAccess(key, access.known_hosts, "", access.connect_timeout_seconds),
        user=access.user,
        timeout=access.connect_timeout_seconds,
        concurrency=concurrency,
    )
    drills = drill_backups(volume, environment, settings, timeout_seconds)
    publish_backup_report(environment, drills)
    failed = [f"{d.environment}/{d.name}" for d in drills if not d.ok]
    summary = {
        "artifact": report_key(environment),
        "clusters": len(drills),
        "failed": failed,
    }
    text = f"{len(drills)} clusters drilled, {len(failed)} failed"
    if failed:
        return Failed(message=f"{text}: {', '.join(failed)}", data=summary)
    return Completed(message=text, data=summary)
