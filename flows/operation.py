"""What every mutating flow does around its work: locks, status, failure reporting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.runtime import flow_run

from cluster_mgmt.redact import redact
from cluster_mgmt.state import ClusterState, StateVolume
from tasks.locks import cluster_lock
from tasks.reporting import emit_cluster_event, update_cluster_artifact


def current_run_id() -> str:
    return str(flow_run.id or "local")


def summary(cluster: ClusterState) -> dict[str, str]:
    """The small, secret-free result every flow returns."""
    status = cluster.read_status()
    return {
        "environment": cluster.environment,
        "name": cluster.name,
        "phase": status.phase if status else "PENDING",
        "message": status.message if status else "",
    }


@contextmanager
def cluster_operation(
    volume: StateVolume, environment: str, name: str, operation: str
) -> Iterator[ClusterState]:
    """Hold the cluster's Prefect limit and its volume lock; on failure record FAILED and tell.

    A busy lock fails the operation without touching the cluster's status.
    """
    run_id = current_run_id()
    with cluster_lock(environment, name):
        cluster = volume.cluster(environment, name)
        cluster.ensure_dir()
        with cluster.lock(operation, run_id):
            try:
                yield cluster
            except BaseException as exc:
                message = redact(f"{operation} failed: {exc}")
                cluster.write_status("FAILED", operation, run_id, message)
                emit_cluster_event(
                    cluster,
                    "cluster.operation.failed",
                    {"operation": operation, "message": message},
                )
                update_cluster_artifact(cluster)
                raise
