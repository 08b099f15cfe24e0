"""Flow rotate-certificates: `rke cert rotate`, expiry before and after, kubeconfigs re-issued."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import Field

from cluster_mgmt.certificates import (
    RotatableService,
    check_ca_confirmation,
    check_services,
    expiry_rows,
    read_expiries,
)
from cluster_mgmt.customer import has_recorded_access
from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.identity import ClusterRef
from cluster_mgmt.operations import recorded_config, require_state
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.spec import ClusterName, Environment
from cluster_mgmt.state import RKESTATE
from flows.configure import configure
from flows.maintenance import maintenance_policy
from flows.operation import (
    check_cluster_nodes,
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    load_settings,
    report_failure,
    run_rke_step,
)
from tasks.reporting import markdown_table, update_cluster_artifact
from tasks.rke import RkeOutcome


class RotationError(ClusterMgmtError):
    """rke could not rotate the certificates; the message says why."""


@flow(name="rotate-certificates", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def rotate_certificates(
    environment: Environment,
    name: ClusterName,
    services: list[RotatableService] = [],  # noqa: B006 - Prefect copies parameters per run
    rotate_ca: bool = False,
    confirm_rotate_ca: Annotated[
        ClusterRef | None,
        Field(
            description=(
                "Required with rotate_ca: the cluster's '<environment>/<name>', typed out to "
                "confirm that every kubeconfig changes and every component restarts"
            )
        ),
    ] = None,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
    policy: BlockName = "default",
) -> State:
    """Renew a cluster's certificates with `rke cert rotate`; the artifact shows each
    certificate's expiry before and after.

    Without `services` every service certificate is renewed and the CA is kept. `rotate_ca`
    replaces the CA too, which changes every kubeconfig and restarts every component and the
    cluster's system pods: it needs `confirm_rotate_ca` set to the cluster's `<env>/<name>`,
    and the customer kubeconfig is re-issued (configuration runs again) in the same run.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        services: Services whose certificates are renewed (kube-apiserver,
            kube-controller-manager, kube-scheduler, kubelet, kube-proxy, etcd); empty: all.
        rotate_ca: Replace the cluster's CA and every certificate.
        confirm_rotate_ca: With rotate_ca, the cluster's `<environment>/<name>`.
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    services = check_services(list(services), rotate_ca)
    check_ca_confirmation(environment, name, rotate_ca, confirm_rotate_ca)
    logger = get_run_logger()
    settings = load_settings(ssh_access, state_volume, rke_settings)
    volume = settings.volume
    parameters = {"services": services, "rotate_ca": rotate_ca}
    decision = maintenance_policy(
        policy, volume, environment, name, Operation.ROTATE_CERTIFICATES, parameters
    )
    volume.check_usable()
    run_id = current_run_id()
    what = "the CA and all certificates" if rotate_ca else ", ".join(services) or "all services"

    with cluster_operation(volume, environment, name, Operation.ROTATE_CERTIFICATES) as cluster:
        cluster.record_decision(Operation.ROTATE_CERTIFICATES, decision.to_dict())
        config_text, config = recorded_config(cluster)
        require_state(cluster, "rotate the certificates of")
        before = read_expiries(cluster.read_text(RKESTATE))
        targets, report = check_cluster_nodes(cluster, settings, config)

        def with_expiry(outcome: RkeOutcome) -> str:
            after = read_expiries(cluster.read_text(RKESTATE))
            table = markdown_table(expiry_rows(before, after))
            return f"{outcome.summary}\n\n## Certificate expiry\n{table}"

        outcome = run_rke_step(
            settings,
            cluster,
            "rotate_certificates",
            config_text,
            targets=targets,
            rows=report.rows(),
            operation=Operation.ROTATE_CERTIFICATES,
            phase=Phase.UPDATING,
            message=f"rotating {what}",
            error=RotationError,
            retry="rotate again",
            detail=with_expiry,
            label=Operation.ROTATE_CERTIFICATES,
            services=services,
            rotate_ca=rotate_ca,
        )
        message = f"rotated {what}: {outcome.summary}"
        if rotate_ca and has_recorded_access(cluster):
            message += (
                f"; kubeconfig re-issued: {configure(cluster, Operation.ROTATE_CERTIFICATES)}"
            )
        cluster.write_status(Phase.READY, Operation.ROTATE_CERTIFICATES, run_id, message)
        update_cluster_artifact(cluster, nodes=report.rows(), detail=with_expiry(outcome))
        logger.info("Cluster %s/%s: %s", environment, name, message)
        return finished(cluster)
