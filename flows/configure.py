"""Flow configure-cluster: the customer's access and the managed resources, converged again.

Also the CONFIGURING step of provision-cluster (`configure`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import State

from blocks import ClusterStateVolume
from blocks.loading import load_block
from cluster_mgmt import customer as access
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.spec import ClusterName, CustomerAccess, Environment
from cluster_mgmt.state import ClusterState
from flows.operation import (
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    install_redaction,
    report_failure,
)
from tasks.kube import configure_customer_access, reapply_managed_resources
from tasks.reporting import update_cluster_artifact


def configure(cluster: ClusterState, operation: str, customer: CustomerAccess | None = None) -> str:
    """The CONFIGURING step (the cluster's lock held): record `customer` when given (a
    provision), apply the recorded access, store the kubeconfig, re-apply managed resources.

    Returns:
        A secret-free summary; a failure raises ConfigureError naming the step.
    """
    cluster.write_status(Phase.CONFIGURING, operation, current_run_id(), "configuring the cluster")
    update_cluster_artifact(cluster)
    if customer is not None:
        access.record_access(cluster, customer)
    summary = configure_customer_access(cluster, access.recorded_access(cluster))
    names = reapply_managed_resources(cluster)
    return summary + (f"; managed resources applied: {', '.join(names)}" if names else "")


@flow(name="configure-cluster", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def configure_cluster(
    environment: Environment, name: ClusterName, state_volume: BlockName = "default"
) -> State:
    """Configure a cluster for its customer again: namespace, service account, RBAC, token
    Secret, customer kubeconfig (file and Secret block), then every managed resource.

    Converges without running RKE: use it after a failed configuration or to repair drift.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        state_volume: Name of the `cluster-state-volume` block.
    """
    install_redaction()
    volume = load_block(ClusterStateVolume, state_volume).volume()
    volume.check_usable()
    with cluster_operation(volume, environment, name, Operation.CONFIGURE) as cluster:
        access.configurable(cluster, cluster.read_status())
        summary = configure(cluster, Operation.CONFIGURE)
        cluster.write_status(Phase.READY, Operation.CONFIGURE, current_run_id(), summary)
        update_cluster_artifact(cluster)
        get_run_logger().info("Cluster %s/%s configured: %s", environment, name, summary)
        return finished(cluster)
