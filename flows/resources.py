"""Flows apply-managed-resource and delete-managed-resource: arbitrary YAML, server-side applied
as `cluster-mgmt`, recorded under `resources/<name>.yaml` only once applied."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from blocks import ClusterStateVolume
from blocks.loading import load_block
from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.manifests import (
    Manifest,
    ResourceName,
    check_resource_name,
    parse_manifest,
    read_record,
)
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Phase
from cluster_mgmt.redact import redact
from cluster_mgmt.spec import ClusterName, Environment
from cluster_mgmt.state import ClusterState, StateVolume
from flows.operation import (
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    install_redaction,
    report_failure,
)
from tasks.kube import apply_managed_resource as apply_objects
from tasks.kube import check_managed_resource
from tasks.kube import delete_managed_resource as delete_objects
from tasks.reporting import update_cluster_artifact

APPLY, DELETE = "apply-resource", "delete-resource"


def _volume(state_volume: str) -> StateVolume:
    install_redaction()
    volume = load_block(ClusterStateVolume, state_volume).volume()
    volume.check_usable()
    return volume


def _require_ready(cluster: ClusterState) -> None:
    status = cluster.read_status()
    if status is None or status.phase != Phase.READY:
        phase = status.phase if status else "not provisioned"
        raise RefusedError(
            f"cluster {cluster.environment}/{cluster.name} is {phase}, not READY: managed "
            "resources change only READY clusters (configure-cluster repairs a failed one)"
        )


def _outcome(cluster: ClusterState, operation: str, message: str, failed: bool) -> State:
    """Keep the cluster READY (its lifecycle is unaffected) with `message`; publish it."""
    cluster.write_status(Phase.READY, operation, current_run_id(), message)
    update_cluster_artifact(cluster)
    if failed:
        get_run_logger().error("%s", redact(message))
        return Failed(message=redact(message))
    get_run_logger().info("%s", message)
    return finished(cluster)


@flow(name="apply-managed-resource", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def apply_managed_resource(
    environment: Environment,
    name: ClusterName,
    resource_name: ResourceName,
    manifest: Manifest,
    state_volume: BlockName = "default",
) -> State:
    """Server-side apply a multi-document YAML manifest to a READY cluster and record it as
    managed resource `resource_name` (replacing an earlier version, whose dropped objects are
    deleted). Bad input is refused before anything is applied; a failure part way is reported
    object by object and leaves the record as it was.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        resource_name: Name of the managed resource (a DNS-1123 label).
        manifest: The YAML documents (at most 256 KiB of UTF-8; no Secrets: parameters are stored in
            plain text).
        state_volume: Name of the `cluster-state-volume` block.
    """
    check_resource_name(resource_name)
    objects = parse_manifest(manifest)
    volume = _volume(state_volume)
    with cluster_operation(volume, environment, name, APPLY) as cluster:
        _require_ready(cluster)
        try:
            objects = check_managed_resource(cluster, objects)
            applied = apply_objects(cluster, resource_name, objects)
        except RefusedError:
            raise
        except ClusterMgmtError as exc:  # ApplyError, or the API did not answer
            return _outcome(cluster, APPLY, str(exc), failed=True)
        message = f"managed resource {resource_name} applied: {', '.join(applied)}"
        return _outcome(cluster, APPLY, message, failed=False)


@flow(name="delete-managed-resource", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def delete_managed_resource(
    environment: Environment,
    name: ClusterName,
    resource_name: ResourceName,
    state_volume: BlockName = "default",
) -> State:
    """Delete the objects of managed resource `resource_name` from a READY cluster, then its
    record.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        resource_name: Name of the managed resource.
        state_volume: Name of the `cluster-state-volume` block.
    """
    check_resource_name(resource_name)
    volume = _volume(state_volume)
    with cluster_operation(volume, environment, name, DELETE) as cluster:
        objects = read_record(cluster, resource_name)
        if objects is None:
            raise RefusedError(
                f"cluster {environment}/{name} has no managed resource {resource_name}; "
                f"`cluster-mgmt resources {environment} {name}` lists them"
            )
        _require_ready(cluster)
        try:
            deleted = delete_objects(cluster, resource_name, objects)
        except ClusterMgmtError as exc:  # ApplyError, or the API did not answer
            return _outcome(cluster, DELETE, str(exc), failed=True)
        message = f"managed resource {resource_name} deleted: {', '.join(deleted)}"
        return _outcome(cluster, DELETE, message, failed=False)
