"""Tasks: gather a cluster's state from a recovery source, and check its CA against the live
cluster. What they gather stays in memory (no result is persisted); only summaries are logged."""

from __future__ import annotations

import tempfile

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cluster_mgmt.driver import ClusterDriver
from cluster_mgmt.errors import RefusedError
from cluster_mgmt.kube import KubeError, connect
from cluster_mgmt.node_shell import NodeAccess
from cluster_mgmt.phases import Operation
from cluster_mgmt.recovery import (
    Recovered,
    RecoverySource,
    archive_source,
    check_live_ca,
    check_nodes_ca,
    donor_directory,
    history_source,
    read_directory,
    read_in_cluster_state,
    recorded_spec_hash,
)
from cluster_mgmt.state import CLUSTER_YML, KUBECONFIG, RKESTATE, ClusterState, StateVolume
from cluster_mgmt.state_files import is_rkestate
from tasks.rke import run_rke


@task(name="gather-recovered-state", cache_policy=NO_CACHE, persist_result=False)
def gather_state(
    cluster: ClusterState,
    volume: StateVolume,
    source: RecoverySource,
    entry: str | None,
    private_key: str,
    driver: ClusterDriver,
) -> Recovered:
    """The cluster's state from `source`, in memory; nothing on the volume changes.

    in-cluster and rke-util need the cluster's admin kubeconfig and cluster.yml: from its
    directory, else its newest history copy or archive that has them.
    """
    if source is RecoverySource.HISTORY:
        if not cluster.dir.is_dir():
            raise RefusedError(
                f"cluster {cluster.environment}/{cluster.name} has no directory on the state "
                "volume, so no history: recover with source archive, in-cluster or rke-util"
            )
        return history_source(cluster, entry)
    if source is RecoverySource.ARCHIVE:
        return archive_source(volume, cluster.environment, cluster.name, entry)
    donor = donor_directory(cluster, volume)
    if donor is None:
        raise RefusedError(
            f"no admin kubeconfig and cluster.yml of {cluster.environment}/{cluster.name} in its "
            "directory, history or archive: nothing can reach its in-cluster state; restore a "
            "backup of the volume"
        )
    files = read_directory(donor)
    files.pop(RKESTATE, None)
    where = donor.name if donor != cluster.dir else "its directory"
    if source is RecoverySource.IN_CLUSTER:
        try:
            with connect(files[KUBECONFIG].decode()) as kube:
                rkestate = read_in_cluster_state(kube)
        except KubeError as exc:
            raise RefusedError(f"reading RKE's in-cluster state failed: {exc}") from None
        origin = f"the Secret kube-system/full-cluster-state (admin kubeconfig of {where})"
    else:
        rkestate = _rke_util(cluster, files, private_key, driver)
        origin = f"rke util get-state-file (with cluster.yml of {where})"
    get_run_logger().info("Recovered state from %s", origin)
    return Recovered(origin, rkestate, files, recorded_spec_hash(donor))


def _rke_util(
    cluster: ClusterState, files: dict[str, bytes], private_key: str, driver: ClusterDriver
) -> bytes:
    """`rke util get-state-file` run in a scratch copy of the cluster (never its directory):
    what it fetches reaches the volume only after the CA check."""
    with tempfile.TemporaryDirectory(prefix="cluster-mgmt-recover-") as scratch:
        copy = StateVolume(scratch).cluster(cluster.environment, cluster.name)
        copy.create()
        copy.write_text(KUBECONFIG, files[KUBECONFIG].decode())
        outcome = run_rke(
            copy,
            "get_state",
            files[CLUSTER_YML].decode(),
            private_key,
            driver,
            label=Operation.RECOVER_STATE,
        )
        rkestate = copy.path(RKESTATE).read_bytes() if copy.path(RKESTATE).exists() else b""
    if not outcome.result.ok or not is_rkestate(rkestate):
        raise RefusedError(f"{outcome.summary}; no complete state was fetched, nothing promoted")
    return rkestate


@task(name="check-recovered-ca", cache_policy=NO_CACHE)
def check_recovered_ca(
    recovered: Recovered, access: NodeAccess, default_user: str, timeout: float = 10.0
) -> str:
    """Where the recovered CA was proved to be the live cluster's, the API server's and the
    nodes' (ForeignCaError if not)."""
    checked = (
        f"{check_live_ca(recovered, timeout)}; {check_nodes_ca(recovered, access, default_user)}"
    )
    get_run_logger().info("CA of %s checked: %s", recovered.origin, checked)
    return checked
