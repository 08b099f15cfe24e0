"""Tasks: SSH preflight of every node before RKE touches them; leftovers after a remove."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.ssh import NodeSshAccess
from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.leftovers import NodeLeftovers, check_leftovers
from cluster_mgmt.preflight import NodeTarget, PreflightReport, preflight


class NodesUnreachableError(ClusterMgmtError):
    """Some nodes could not be reached (and nothing worse happened): worth another try."""

    def __init__(self, report: PreflightReport) -> None:
        self.report = report
        names = ", ".join(f"{n.address}: {n.error}" for n in report.failures)
        super().__init__(f"unreachable: {names}")


def _only_unreachable(task, task_run, state) -> bool:
    """Retry when every failure was a node out of reach; a bad key or host key is final."""
    try:
        state.result()
    except NodesUnreachableError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False


@task(
    name="ssh-preflight",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=_only_unreachable,
)
def check_nodes(
    targets: list[NodeTarget],
    access: NodeSshAccess,
    recorded_known_hosts: str,
    kubernetes_version: str,
    ignore_docker_version: bool,
    retry_unreachable: bool = True,
) -> PreflightReport:
    """Check every node concurrently: reachable, host key trusted, login, Docker version.

    Args:
        targets: The nodes to check.
        access: The `node-ssh-access` block (key, trusted host keys, policy, timeout).
        recorded_known_hosts: Host keys already recorded for this cluster.
        kubernetes_version: The cluster's version, which decides the Docker versions allowed.
        ignore_docker_version: Skip the Docker version check, as RKE's flag does.
        retry_unreachable: Raise `NodesUnreachableError` (retried once) when the only failures
            are unreachable nodes, instead of returning the report.

    Returns:
        A per-node report; the caller stops if any node failed.
    """
    report = preflight(
        targets,
        private_key=access.private_key.get_secret_value(),
        known_hosts=access.known_hosts,
        recorded_known_hosts=recorded_known_hosts,
        policy=access.policy,
        kubernetes_version=kubernetes_version,
        ignore_docker_version=ignore_docker_version,
        connect_timeout=access.connect_timeout_seconds,
    )
    if retry_unreachable and report.failures and not any(n.reachable for n in report.failures):
        raise NodesUnreachableError(report)
    return report


@task(name="find-leftovers", cache_policy=NO_CACHE)
def find_leftovers(
    targets: list[NodeTarget], access: NodeSshAccess, recorded_known_hosts: str
) -> list[NodeLeftovers]:
    """Ask every node, over SSH with the host keys already trusted, what `rke remove` left.

    Args:
        targets: The cluster's nodes.
        access: The `node-ssh-access` block (key, trusted host keys, timeout).
        recorded_known_hosts: Host keys recorded for this cluster.

    Returns:
        One entry per node: leftover paths and containers, or why it is unverified.
    """
    return check_leftovers(
        targets,
        private_key=access.private_key.get_secret_value(),
        known_hosts=access.known_hosts,
        recorded_known_hosts=recorded_known_hosts,
        connect_timeout=access.connect_timeout_seconds,
    )
