"""Flow plan-cluster: what update-cluster would change, restart or refuse (read-only, no lock)."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings
from blocks.loading import load_block
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.plan import Plan, plan_update, read_applied
from cluster_mgmt.redact import redact
from cluster_mgmt.rke_config import render_cluster_config
from cluster_mgmt.spec import ClusterSpec
from cluster_mgmt.state import ClusterState
from flows.operation import expected_failures, install_redaction
from tasks.kube import read_live_cluster
from tasks.reporting import publish_plan


def resolve_version(spec: ClusterSpec, rke: RkeSettings, cluster: ClusterState) -> ClusterSpec:
    """The spec with its version resolved and checked: a spec naming none keeps the
    cluster's (an update never upgrades by default), else the block's default."""
    current = read_applied(cluster).kubernetes_version
    supported = rke.supported_kubernetes_versions
    default = current if current in supported else rke.default_kubernetes_version
    return spec.with_version(supported, default)


def make_plan(
    cluster: ClusterState, spec: ClusterSpec, rke: RkeSettings, ssh_user: str
) -> tuple[Plan, dict]:
    """Plan `spec` (version resolved) against the cluster's recorded and live state, publish
    it as artifact `plan-<env>-<name>`; the plan and the rendered cluster.yml."""
    applied = read_applied(cluster)
    config = render_cluster_config(spec, ssh_user=ssh_user)
    live = read_live_cluster(cluster) if applied.nodes else None
    plan = plan_update(spec, config, applied, rke.supported_kubernetes_versions, live)
    publish_plan(spec.environment, spec.name, plan.to_markdown(), plan.summary())
    return plan, config


@flow(name="plan-cluster", validate_parameters=False)
@expected_failures
def plan_cluster(
    spec: ClusterSpec,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
) -> State:
    """Show what update-cluster would do with `spec`: nodes added and removed, the Kubernetes
    version change, settings changed, what RKE restarts, and what would be refused and why.

    Read-only: no lock, no node touched, nothing written on the volume. The plan is the run's
    result and the markdown artifact `plan-<env>-<name>`.

    Args:
        spec: The cluster as it should become.
        ssh_access: Name of the `node-ssh-access` block (its user renders cluster.yml).
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block (supported versions).
    """
    install_redaction()
    rke = load_block(RkeSettings, rke_settings)
    user = load_block(NodeSshAccess, ssh_access).user
    volume = load_block(ClusterStateVolume, state_volume).volume()
    volume.check_usable()
    cluster = volume.cluster(spec.environment, spec.name)
    spec = resolve_version(spec, rke, cluster)
    plan, _ = make_plan(cluster, spec, rke, user)
    return Completed(message=redact(plan.summary()), data=plan.to_dict())
