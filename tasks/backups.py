"""Tasks: restore drills of every cluster's backups, and their report. Two task runs per
sweep, whatever the fleet size: the drills run concurrently inside `drill-backups`."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from cluster_mgmt.backups import Drill, DrillSettings, drill_all
from cluster_mgmt.redact import redact
from cluster_mgmt.state import StateVolume
from tasks.reporting import emit_event_for

BACKUP_FAILED = "cluster.backup.failed"


def report_key(environment: str | None) -> str:
    """The table artifact of a drill: `backups-<env>`, or `backups-all`."""
    return f"backups-{environment or 'all'}"


@task(name="drill-backups", cache_policy=NO_CACHE)
def drill_backups(
    volume: StateVolume, environment: str | None, settings: DrillSettings, timeout: float
) -> list[Drill]:
    """Drill every cluster with state (of `environment`, or all) within `timeout` seconds."""
    clusters = [c for c in volume.clusters(environment) if c.rke_state_written()]
    get_run_logger().info("Drilling the backups of %d clusters", len(clusters))
    return drill_all(clusters, settings, time.monotonic() + timeout)


@task(name="publish-backup-report", cache_policy=NO_CACHE)
def publish_backup_report(environment: str | None, drills: list[Drill]) -> None:
    """The table artifact, and `cluster.backup.failed` for every failed drill."""
    logger = get_run_logger()
    failed = [d for d in drills if not d.ok]
    for drill in failed:
        reason = redact("; ".join(drill.reasons))
        logger.error("Backup drill of %s/%s failed: %s", drill.environment, drill.name, reason)
        emit_event_for(
            drill.environment,
            drill.name,
            BACKUP_FAILED,
            {
                "reason": reason,
                "history_copy": drill.history_copy,
                "etcd_snapshot": drill.snapshot,
            },
        )
    rows = [{k: redact(str(v)) for k, v in d.row().items()} for d in drills] or [
        {
            "cluster": "-",
            "result": "no clusters",
            "history copy": "-",
            "etcd snapshot": "-",
            "reason": "-",
        }
    ]
    create_table_artifact(
        key=report_key(environment),
        table=rows,
        description=f"Backup drill: {len(drills) - len(failed)} passed, {len(failed)} failed",
    )
