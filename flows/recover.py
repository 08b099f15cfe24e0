"""Flow recover-cluster-state: rebuild a cluster's RKE state from history, its archive, RKE's
in-cluster copy or `rke util get-state-file`, once its CA proved to be the live cluster's."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import State

from cluster_mgmt.atomic import FILE_MODE, atomic_write
from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.kube import KubeError, connect
from cluster_mgmt.node_shell import NodeAccess
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.recovery import HistoryEntry, Recovered, RecoverySource, files_to_restore
from cluster_mgmt.spec import ClusterName, Environment
from cluster_mgmt.state import KUBECONFIG, RKE_FILES, ClusterState
from flows.operation import (
    check_policy,
    cluster_operation,
    current_run_id,
    expected_failures,
    finished,
    load_settings,
    report_failure,
)
from tasks.recovery import check_recovered_ca, gather_state
from tasks.reporting import update_cluster_artifact


class RecoveryError(ClusterMgmtError):
    """The state was recovered but the cluster does not answer with it."""


@flow(name="recover-cluster-state", on_failure=[report_failure], validate_parameters=False)
@expected_failures
def recover_cluster_state(
    environment: Environment,
    name: ClusterName,
    source: RecoverySource,
    entry: HistoryEntry | None = None,
    ssh_access: BlockName = "default",
    state_volume: BlockName = "default",
    rke_settings: BlockName = "default",
    policy: BlockName = "default",
) -> State:
    """Rebuild cluster.rkestate and the admin kubeconfig (and cluster.yml, known_hosts, the
    customer kubeconfig and managed resources when the source has them and the cluster lost
    them) from `source`, after proving the recovered CA is the one the live cluster uses.

    A foreign CA is refused and nothing is written. A present, complete cluster.rkestate of
    the live CA is kept. The cluster's directory is created if it was lost, but only once the
    recovered state has passed the CA check. The cluster is READY afterwards only if its API
    answers with the recovered admin kubeconfig.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        source: history, archive, in-cluster (the Secret kube-system/full-cluster-state, read
            with the admin kubeconfig) or rke-util (`rke util get-state-file`).
        entry: For history or archive: the entry's directory name; default the newest.
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    source = RecoverySource(source)
    if entry is not None and source not in (RecoverySource.HISTORY, RecoverySource.ARCHIVE):
        raise RefusedError(f"entry names a history or archive entry; source {source} takes none")
    settings = load_settings(ssh_access, state_volume, rke_settings)
    volume = settings.volume
    check_policy(
        policy,
        "rke-cluster-maintenance",
        volume,
        environment,
        name,
        {"operation": Operation.RECOVER_STATE, "parameters": {"source": source, "entry": entry}},
        Operation.RECOVER_STATE,
    )
    volume.check_usable()
    target = volume.cluster(environment, name)
    recovered = gather_state(target, volume, source, entry, settings.private_key, settings.driver)
    access = NodeAccess(
        private_key=settings.private_key,
        known_hosts=settings.access.known_hosts,
        recorded_known_hosts=(target.read_text("known_hosts") if target.dir.is_dir() else None)
        or recovered.donor.get("known_hosts", b"").decode(),
        connect_timeout=settings.access.connect_timeout_seconds,
    )
    checked = check_recovered_ca(recovered, access, settings.access.user)
    # Only now, with state proved to be this live cluster's, may a lost directory be re-made.
    lost = not target.dir.is_dir()
    with cluster_operation(
        volume, environment, name, Operation.RECOVER_STATE, create=lost
    ) as cluster:
        message = _restore(cluster, recovered, checked)
        status = cluster.read_status()
        known_spec = status is not None and status.spec_hash is not None
        spec_hash = None if known_spec else recovered.spec_hash  # None keeps the recorded one
        cluster.write_status(
            Phase.READY, Operation.RECOVER_STATE, current_run_id(), message, spec_hash
        )
        update_cluster_artifact(cluster, detail=message)
        get_run_logger().info("%s", message)
        return finished(cluster, source=str(source), origin=recovered.origin)


def _restore(cluster: ClusterState, recovered: Recovered, checked: str) -> str:
    """Promote what the cluster lacks (history keeps what was there first); check that the
    cluster answers with the admin kubeconfig. Returns the status message."""
    wanted = files_to_restore(cluster, recovered)
    rke_files = [n for n in RKE_FILES if n in wanted]
    if rke_files:
        with cluster.staging(Operation.RECOVER_STATE) as stage:
            for filename in rke_files:
                atomic_write(stage / filename, wanted[filename], FILE_MODE)
        if cluster.last_promotion and cluster.last_promotion.rejected:
            raise RecoveryError(
                f"recovered {', '.join(cluster.last_promotion.rejected)} did not promote"
            )
    others = [n for n in wanted if n not in RKE_FILES]
    for filename in others:
        cluster.write_text(filename, wanted[filename].decode())
    restored = ", ".join([*rke_files, *others]) or "nothing (the state was intact)"
    try:
        with connect(cluster.read_text(KUBECONFIG) or "") as kube:
            version = kube.call("GET", "/version").get("gitVersion", "?")
    except KubeError as exc:
        raise RecoveryError(
            f"state recovered from {recovered.origin} ({restored}; {checked}), but the cluster "
            f"does not answer with the recovered admin kubeconfig: {exc}. Check the cluster, "
            "then run the recovery again"
        ) from None
    return (
        f"state recovered from {recovered.origin}: restored {restored}; {checked}; the API "
        f"answers (Kubernetes {version})"
    )
