"""What every mutating flow does around its work: locks, status, failure reporting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.runtime import flow_run
from prefect.states import Completed, State

from cluster_mgmt.redact import redact
from cluster_mgmt.state import ClusterState, StateVolume, Status
from tasks.locks import cluster_lock
from tasks.reporting import emit_cluster_event, update_cluster_artifact


def current_run_id() -> str:
    return str(flow_run.id or "local")


def finished(cluster: ClusterState, status: Status | None = None, **extra: str) -> State:
    """The run's final state: a small, secret-free summary as its result, and as its message
    so that API clients see it without result persistence."""
    status = status or cluster.read_status()
    result = {
        "environment": cluster.environment,
        "name": cluster.name,
        "phase": status.phase if status else "PENDING",
        "message": status.message if status else "",
        **extra,
    }
    return Completed(message=redact(f"{result['phase']}: {result['message']}"), data=result)


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
