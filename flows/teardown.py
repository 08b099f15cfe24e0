"""Flow teardown-cluster: rke remove --force, then archive the cluster's state."""

from __future__ import annotations

import yaml
from prefect import flow, get_run_logger
from prefect.states import State

from cluster_mgmt.preflight import NodeTarget
from cluster_mgmt.spec import ClusterName, Environment
from flows.operation import (
    RefusedError,
    check_policy,
    cluster_operation,
    current_run_id,
    finished,
    load_settings,
    report_failure,
)
from tasks.preflight import check_nodes
from tasks.reporting import emit_cluster_event, update_cluster_artifact
from tasks.rke import run_rke


class TeardownError(RuntimeError):
    """Teardown stopped; the message says why and what to do."""


def _targets(config: dict, default_user: str) -> list[NodeTarget]:
    return [
        NodeTarget(n["address"], int(n.get("port", 22)), n.get("user") or default_user)
        for n in config["nodes"]
    ]


@flow(name="teardown-cluster", on_failure=[report_failure])
def teardown_cluster(
    environment: Environment,
    name: ClusterName,
    ssh_access: str = "default",
    state_volume: str = "default",
    rke_settings: str = "default",
    policy: str = "default",
) -> State:
    """Remove a cluster from its nodes with `rke remove --force` and archive its state.

    Unreachable nodes do not stop the teardown (RKE skips them); a node whose host key
    changed or that refuses the key does.

    Args:
        environment: The cluster's environment.
        name: The cluster's name.
        ssh_access: Name of the `node-ssh-access` block.
        state_volume: Name of the `cluster-state-volume` block.
        rke_settings: Name of the `rke-settings` block.
        policy: Name of the `policy-service` block; without one, the built-in rules apply.
    """
    logger = get_run_logger()
    settings = load_settings(ssh_access, state_volume, rke_settings)
    volume = settings.volume
    decision = check_policy(policy, "rke-cluster-teardown", volume, environment, name, {})
    volume.check_usable()
    if volume.cluster(environment, name).read_text("cluster.yml") is None:
        raise TeardownError(
            f"no cluster {environment}/{name} on the state volume {volume.root}; "
            "check the environment and name"
        )
    run_id = current_run_id()

    with cluster_operation(volume, environment, name, "teardown") as cluster:
        cluster.record_decision("teardown", decision.to_dict())
        config_text = cluster.read_text("cluster.yml") or ""
        config = yaml.safe_load(config_text)
        report = check_nodes(
            _targets(config, settings.access.user),
            settings.access,
            cluster.read_text("known_hosts") or "",
            config.get("kubernetes_version", ""),
            ignore_docker_version=settings.rke.ignore_docker_version,
            retry_unreachable=False,
        )
        refused = [n for n in report.failures if n.reachable]
        if refused:
            reasons = "; ".join(f"{n.address}: {n.error}" for n in refused)
            raise RefusedError(f"preflight failed, nothing was removed: {reasons}")
        for node in report.failures:
            logger.warning("Node %s is unreachable; RKE will skip it: %s", node.address, node.error)

        cluster.write_status("DELETING", "teardown", run_id, "running rke remove")
        update_cluster_artifact(cluster, nodes=report.rows())
        outcome = run_rke(cluster, "remove", config_text, settings.private_key, settings.driver)
        if not outcome.result.ok:
            raise TeardownError(f"{outcome.summary}; fix the cause and run teardown again")

        cluster.write_status("DELETED", "teardown", run_id, outcome.summary)
        update_cluster_artifact(cluster, nodes=report.rows(), detail=outcome.summary)
        status = cluster.read_status()
        archived = cluster.archive()
        emit_cluster_event(cluster, "cluster.deleted", {"archive": archived.name})
        logger.info("Cluster %s/%s removed; state archived at %s", environment, name, archived)
        return finished(cluster, status, archive=str(archived))
