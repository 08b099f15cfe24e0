"""What a teardown (and a day-2 operation on a recorded cluster) must do, decided in the domain:
which cluster.yml rke runs with, which nodes it skips, and when it is refused instead."""

from __future__ import annotations

import pytest

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.operations import (
    preflight_failure,
    recorded_config,
    require_state,
    skipped_nodes,
)
from cluster_mgmt.preflight import NodeReport, PreflightReport
from cluster_mgmt.state import ClusterState, StateVolume
from tests.test_state import rkestate

CLUSTER_YML = "cluster_name: prod-web\nnodes:\n- address: 10.0.0.1\n  role: [etcd]\n"


@pytest.fixture
def cluster(tmp_path) -> ClusterState:
    cluster = StateVolume(tmp_path).cluster("prod", "web")
    with cluster.lock("provision", "r1", create=True):
        pass
    return cluster


def node(address: str, *, reachable: bool = True, error: str | None = None) -> NodeReport:
    return NodeReport(address, 22, reachable, reachable, "26.1.4", "SHA256:x", error)


def report(*nodes: NodeReport) -> PreflightReport:
    return PreflightReport(nodes=nodes, accepted_host_keys=())


# -- the cluster.yml rke runs with ---------------------------------------------------------------


def test_the_recorded_cluster_yml_is_what_rke_runs_with(cluster):
    cluster.write_text("cluster.yml", CLUSTER_YML)
    text, config = recorded_config(cluster)
    assert text == CLUSTER_YML
    assert config["nodes"] == [{"address": "10.0.0.1", "role": ["etcd"]}]


@pytest.mark.parametrize(
    "content",
    [None, "", "- a list\n", "cluster_name: x\n", "nodes: []\n", "nodes: [unclosed\n"],
    ids=["missing", "empty", "not-a-mapping", "no-nodes", "empty-nodes", "not-yaml"],
)
def test_without_a_usable_cluster_yml_teardown_is_refused(cluster, content):
    if content is not None:
        cluster.path("cluster.yml").write_text(content)
    with pytest.raises(RefusedError, match="prod/web has no usable cluster.yml.*environment and"):
        recorded_config(cluster)


# -- which nodes rke skips ------------------------------------------------------------------------


def test_all_nodes_passing_skips_none():
    assert (
        skipped_nodes(report(node("10.0.0.1"), node("10.0.0.2")), None, unreachable_ok=True) == []
    )


def test_teardown_skips_unreachable_nodes():
    gone = node("10.0.0.2", reachable=False, error="connection refused")
    assert skipped_nodes(report(node("10.0.0.1"), gone), None, unreachable_ok=True) == [gone]


def test_a_reachable_node_failing_preflight_refuses_teardown():
    changed = node("10.0.0.1", error="HOST KEY CHANGED")
    gone = node("10.0.0.2", reachable=False, error="timed out")
    why = "accept-new is not applied"
    with pytest.raises(RefusedError) as refused:
        skipped_nodes(report(changed, gone), why, unreachable_ok=True)
    message = str(refused.value)
    assert message.startswith("preflight failed, no node was changed: 10.0.0.1: HOST KEY CHANGED")
    assert "10.0.0.2" not in message  # unreachable nodes are skipped, not reasons to refuse
    assert message.endswith(f"({why})")


def test_an_operation_that_needs_every_node_refuses_unreachable_ones():
    gone = node("10.0.0.2", reachable=False, error="timed out")
    with pytest.raises(RefusedError, match="10.0.0.2: timed out$"):
        skipped_nodes(report(node("10.0.0.1"), gone), None, unreachable_ok=False)


def test_preflight_failure_names_every_node():
    failures = [node("a", error="x"), node("b", error="y")]
    assert preflight_failure(failures, None) == "preflight failed, no node was changed: a: x; b: y"


# -- the cluster's RKE state ----------------------------------------------------------------------


def test_complete_rke_state_is_required(cluster):
    cluster.write_text("cluster.rkestate", rkestate(1))
    require_state(cluster, "restore etcd of")  # no refusal


@pytest.mark.parametrize(("content", "problem"), [(None, "is missing"), ("{}", "is not complete")])
def test_missing_or_incomplete_rke_state_is_refused(cluster, content, problem):
    if content is not None:
        cluster.path("cluster.rkestate").write_text(content)
    with pytest.raises(
        RefusedError, match=f"refusing to restore etcd of cluster prod/web: .*{problem}"
    ):
        require_state(cluster, "restore etcd of")
