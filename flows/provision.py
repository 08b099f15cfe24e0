"""Flow provision-cluster: policy → preflight → render → rke up → persist → configure → READY."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import State

from cluster_mgmt.customer import has_recorded_access
from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.operations import ProvisionStep, preflight_failure, provision_step
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.rke_config import dump_cluster_config, render_cluster_config
from cluster_mgmt.spec import ClusterSpec
from flows.configure import configure
from flows.operation import (
    check_policy,
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    load_settings,
    node_targets,
    preflight_nodes,
    report_failure,
    run_rke_step,
)
from tasks.health import check_cluster_health
from tasks.reporting import api_witness, emit_cluster_event, update_cluster_artifact


class ProvisionError(ClusterMgmtError):
    """Provisioning stopped; the message says why and what to do."""


@flow(name="provision-cluster", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def provision_cluster(
    spec: ClusterSpec,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
    policy: BlockName = "default",
) -> State:
    """Create an RKE cluster on the spec's nodes and keep its state on the state volume.

    Policy first: a denied request touches no node and writes nothing on the volume. After
    `rke up` the cluster is CONFIGURING (customer access, kubeconfig, managed resources) and
    READY only once that succeeded; a failed configuration leaves it FAILED, and either
    configure-cluster (without RKE) or provision-cluster again (with `rke up`) resumes it.

    Args:
        spec: The cluster to create.
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    logger = get_run_logger()
    settings = load_settings(ssh_access, state_volume, rke_settings)
    spec = spec.with_version(
        settings.rke.supported_kubernetes_versions, settings.rke.default_kubernetes_version
    )
    volume = settings.volume
    decision = check_policy(
        policy,
        "rke-cluster",
        volume,
        spec.environment,
        spec.name,
        spec.model_dump(mode="json"),
        Operation.PROVISION,
    )
    volume.check_usable()
    config = render_cluster_config(spec, ssh_user=settings.access.user)
    spec_hash = spec.spec_hash()
    run_id = current_run_id()
    targets = node_targets(config, settings.access.user)

    with cluster_operation(
        volume, spec.environment, spec.name, Operation.PROVISION, create=True
    ) as cluster:
        cluster.record_decision(Operation.PROVISION, decision.to_dict())
        # read under the lock: a teardown that held it meanwhile has recorded the deletion
        witness = api_witness(spec.environment, spec.name)
        step = provision_step(cluster, spec_hash, config, witness)
        if step is ProvisionStep.NOTHING_TO_DO and has_recorded_access(cluster):
            logger.info("Cluster %s is READY with this spec; nothing to do", spec.cluster_name)
            return finished(cluster)
        logger.info("Provision of %s: %s", spec.cluster_name, step)
        cluster.write_status(
            Phase.PROVISIONING, Operation.PROVISION, run_id, "checking nodes", spec_hash
        )
        update_cluster_artifact(cluster)

        report, why = preflight_nodes(settings, cluster, targets, spec.kubernetes_version)
        if not report.ok:
            update_cluster_artifact(cluster, nodes=report.rows())
            raise ProvisionError(preflight_failure(report.failures, why))

        outcome = run_rke_step(
            settings,
            cluster,
            "up",
            dump_cluster_config(config),
            targets=targets,
            rows=report.rows(),
            operation=Operation.PROVISION,
            phase=Phase.PROVISIONING,
            message="running rke up",
            spec_hash=spec_hash,
            error=ProvisionError,
            retry="run provision again: it resumes",
        )

        configured = configure(cluster, Operation.PROVISION, spec.customer)
        cluster.write_status(
            Phase.READY, Operation.PROVISION, run_id, f"{outcome.summary}; {configured}", spec_hash
        )
        first_check = check_cluster_health(volume, spec.environment, spec.name, return_state=True)
        if first_check.is_completed():
            logger.info("First health check: %s", first_check.result().get("verdict"))
        else:  # the cluster is READY all the same; the monitor judges it on its next sweep
            logger.warning("First health check did not run: %s", first_check.message)
        update_cluster_artifact(cluster, nodes=report.rows(), detail=outcome.summary)
        emit_cluster_event(
            cluster,
            "cluster.provisioned",
            {"kubernetes_version": spec.kubernetes_version, "nodes": len(spec.nodes or [])},
        )
        logger.info("Cluster %s is READY", spec.cluster_name)
        return finished(cluster)
