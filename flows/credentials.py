"""Flow rotate-customer-credentials: a new token, stored, then the old one revoked."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import State

from blocks import ClusterStateVolume
from blocks.loading import load_block
from cluster_mgmt import customer as access
from cluster_mgmt.errors import RefusedError
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.spec import ClusterName, Environment
from flows.operation import (
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    install_redaction,
    report_failure,
)
from tasks.kube import configure_customer_access
from tasks.reporting import update_cluster_artifact


@flow(name="rotate-customer-credentials", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def rotate_customer_credentials(
    environment: Environment, name: ClusterName, state_volume: BlockName = "default"
) -> State:
    """Give the customer a new token: a new token Secret, the customer kubeconfig (file and
    Secret block `kubeconfig-<env>-<name>`) updated, and only once the new token was accepted
    and stored, the old token Secret deleted, which revokes the old token.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        state_volume: Name of the `cluster-state-volume` block.
    """
    install_redaction()
    volume = load_block(ClusterStateVolume, state_volume).volume()
    volume.check_usable()
    with cluster_operation(volume, environment, name, Operation.ROTATE_CREDENTIALS) as cluster:
        status = cluster.read_status()
        if status is None or status.phase != Phase.READY:
            raise RefusedError(
                f"cluster {environment}/{name} is {status.phase if status else 'unknown'}, not "
                "READY: configure it first (configure-cluster)"
            )
        summary = configure_customer_access(cluster, access.recorded_access(cluster), rotate=True)
        cluster.write_status(
            Phase.READY,
            Operation.ROTATE_CREDENTIALS,
            current_run_id(),
            f"credentials rotated: {summary}",
        )
        update_cluster_artifact(cluster)
        get_run_logger().info("Customer credentials of %s/%s rotated", environment, name)
        return finished(cluster)
