"""What every mutating flow does around its work: settings, locks, status, failure reporting."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from prefect.runtime import flow_run
from prefect.states import Completed, State

from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings
from blocks.loading import load_block
from cluster_mgmt.driver import RkeDriver
from cluster_mgmt.policy import Decision
from cluster_mgmt.preflight import load_private_key
from cluster_mgmt.redact import RedactingFilter, redact, register_secret
from cluster_mgmt.state import ClusterBusyError, ClusterState, StateVolume, Status
from tasks.locks import cluster_lock
from tasks.policy import PolicyDeniedError, validate_policy
from tasks.reporting import emit_event_for, update_cluster_artifact


class RefusedError(RuntimeError):
    """The operation was refused as asked (the cluster stays as it was); the message says why."""


@dataclass
class Settings:
    """The blocks a flow runs with, checked before any side effect."""

    rke: RkeSettings
    access: NodeSshAccess
    volume: StateVolume
    driver: RkeDriver

    @property
    def private_key(self) -> str:
        return self.access.private_key.get_secret_value()


def install_redaction() -> None:
    """Put the redaction filter on every logging handler (Prefect's API handler included)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def load_settings(ssh_access: str, state_volume: str, rke_settings: str) -> Settings:
    """Load the blocks and check what can be checked without touching a node or the volume."""
    install_redaction()
    rke = load_block(RkeSettings, rke_settings)
    access = load_block(NodeSshAccess, ssh_access)
    volume = load_block(ClusterStateVolume, state_volume).volume()
    register_secret(access.private_key.get_secret_value())
    load_private_key(access.private_key.get_secret_value())  # says what is wrong, not the key
    driver = rke.driver()
    driver.executable()
    return Settings(rke, access, volume, driver)


def check_policy(
    policy: str, kind: str, volume: StateVolume, environment: str, name: str, spec: dict
) -> Decision:
    """validate-policy; a denied operation on an existing cluster is kept in its history too
    (unless another operation holds the cluster: then only the run and its artifact say it)."""
    operation = "teardown" if kind.endswith("teardown") else "provision"
    try:
        return validate_policy(policy, kind, environment, name, spec)
    except PolicyDeniedError as denied:
        cluster = volume.cluster(environment, name)
        if cluster.exists():
            with suppress(ClusterBusyError), cluster.lock(operation, current_run_id()):
                cluster.record_decision(operation, denied.decision.to_dict())
        raise


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


def report_failure(flow: Any, run: Any, state: State) -> None:
    """Flow on_failure hook: `cluster.operation.failed` for every failed operation, including
    those that stopped before touching the cluster (policy, blocks, bad input)."""
    parameters = run.parameters or {}
    spec = parameters.get("spec") or {}
    environment = parameters.get("environment") or spec.get("environment", "default")
    name = parameters.get("name") or spec.get("name")
    if name:
        emit_event_for(
            environment,
            name,
            "cluster.operation.failed",
            {"operation": flow.name, "message": redact(state.message or "")},
        )


@contextmanager
def cluster_operation(
    volume: StateVolume, environment: str, name: str, operation: str
) -> Iterator[ClusterState]:
    """Hold the cluster's Prefect limit and its volume lock; on failure record FAILED.

    A busy lock or a refusal (RefusedError) leaves the cluster's status as it was.
    """
    run_id = current_run_id()
    with cluster_lock(environment, name):
        cluster = volume.cluster(environment, name)
        cluster.ensure_dir()
        with cluster.lock(operation, run_id):
            try:
                yield cluster
            except RefusedError:
                raise
            except BaseException as exc:
                message = redact(f"{operation} failed: {exc}")
                cluster.write_status("FAILED", operation, run_id, message)
                update_cluster_artifact(cluster)
                raise
