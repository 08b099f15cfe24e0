"""Cluster identity: the names derived from a cluster's environment and name."""

from __future__ import annotations


def lock_name(environment: str, name: str) -> str:
    """The Prefect global concurrency limit `cluster-<env>-<name>` (environments have no dash)."""
    return f"cluster-{environment}-{name}"


def artifact_key(environment: str, name: str) -> str:
    """The key of the cluster's Prefect artifact, `cluster-<env>-<name>`."""
    return f"cluster-{environment}-{name}"


def resource_id(environment: str, name: str) -> str:
    """The Prefect event resource of the cluster."""
    return f"cluster-mgmt.cluster.{environment}.{name}"
