"""plan-cluster and update-cluster: the plan's rules (unit), then one lab cluster of three etcd
nodes (one of them the control plane) and a spare worker, updated through a real Prefect
server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from cluster_mgmt.plan import Applied, Live, NodeView, Plan, plan_update, version_key
from cluster_mgmt.rke_config import render_cluster_config
from cluster_mgmt.spec import ClusterSpec, CustomerAccess, NodeSpec
from cluster_mgmt.state import Status
from flows.plan import plan_cluster
from flows.update import update_cluster
from lab.nodes import LabNodes
from lab.reliability import rke_pids
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 190
VERSIONS = [
    "v1.27.16-rancher1-1",
    "v1.28.14-rancher1-1",
    "v1.29.9-rancher1-1",
    "v1.30.5-rancher1-1",
]
START = VERSIONS[1]
ALL = ["controlplane", "etcd", "worker"]


# -- the plan's rules, without a cluster ---------------------------------------------------------


def spec_of(roles: dict[str, list[str]], **fields) -> ClusterSpec:
    nodes = [NodeSpec(address=a, roles=r) for a, r in roles.items()]
    fields.setdefault("kubernetes_version", START)
    return ClusterSpec(environment="test", name="unit", nodes=nodes, **fields)


def applied_as(spec: ClusterSpec, phase: str = "READY", operation: str = "provision") -> Applied:
    config = render_cluster_config(spec, ssh_user="rke")
    status = Status(phase, operation, "run", "m", "2026-01-01T00:00:00+00:00")
    return Applied(
        status=status,
        config=config,
        nodes=[NodeView.of(n) for n in config["nodes"]],
        kubernetes_version=spec.kubernetes_version,
        source="cluster.yml",
        customer=spec.customer,
    )


def plan_of(before: ClusterSpec, after: ClusterSpec, live: Live | None = None, **kw) -> Plan:
    config = render_cluster_config(after, ssh_user="rke")
    return plan_update(after, config, applied_as(before, **kw), VERSIONS, live)


THREE = {"10.0.0.1": ALL, "10.0.0.2": ALL, "10.0.0.3": ALL}
BASE = spec_of(THREE, kubernetes_version=START)


def test_plan_lists_nodes_version_settings_and_restarts():
    after = spec_of(
        {**THREE, "10.0.0.4": ["worker"]},
        kubernetes_version=VERSIONS[2],
        etcd_snapshots={"interval_hours": 12, "retention_hours": 24},
        customer=CustomerAccess(access="namespace-admin"),
    )
    plan = plan_of(BASE, after)
    assert plan.allowed and plan.needs_rke and plan.customer_changed
    assert plan.add == [{"address": "10.0.0.4", "roles": "worker"}] and plan.remove == []
    assert (plan.version_from, plan.version_to) == (START, VERSIONS[2])
    assert plan.settings == [
        "services.etcd.backup_config.interval_hours",
        "services.etcd.backup_config.retention",
    ]
    restarts = " ".join(plan.restarts)
    assert "kube-apiserver" in restarts and "kubelet" in restarts  # the upgrade
    assert "etcd-rolling-snapshots" in restarts and "customer access" in restarts
    assert plan.new_or_changed == [n.address for n in after.nodes]  # a new version: all nodes
    markdown = plan.to_markdown()
    assert "## Nodes to add" in markdown and "10.0.0.4" in markdown


def test_plan_removing_a_worker_and_an_unchanged_spec():
    with_worker = spec_of({**THREE, "10.0.0.4": ["worker"]}, kubernetes_version=START)
    plan = plan_of(with_worker, BASE)
    assert plan.allowed and plan.remove == [{"address": "10.0.0.4", "roles": "worker"}]
    assert any("cordoned and deleted from Kubernetes" in r for r in plan.restarts)
    same = plan_of(BASE, BASE)
    assert not same.has_changes and not same.needs_rke and same.summary().endswith("nothing to do")


def test_etcd_quorum_one_change_and_odd_count():
    one_etcd = {"10.0.0.1": ALL, "10.0.0.2": ["worker"], "10.0.0.3": ["worker"]}
    plan = plan_of(BASE, spec_of(one_etcd, kubernetes_version=START))
    assert any("below the quorum of 2" in r for r in plan.refusals)  # 3 -> 1: two go at once
    # an even count cannot even be asked for; the plan refuses it all the same
    two = BASE.model_copy(
        update={"nodes": [*BASE.nodes[:2], NodeSpec(address="10.0.0.3", roles=["worker"])]}
    )
    plan = plan_of(BASE, two)
    assert any("2 etcd members" in r and "odd count" in r for r in plan.refusals)
    assert not any("quorum of 2;" in r for r in plan.refusals)  # 2 of 3 kept: quorum holds
    single = spec_of({"10.0.0.1": ALL}, kubernetes_version=START)
    plan = plan_of(single, spec_of({"10.0.0.1": ["controlplane", "worker"], "10.0.0.2": ALL}))
    assert any("below the quorum of 1" in r for r in plan.refusals)
    # two etcd nodes together from one odd count to the next: 1 -> 3 and 5 -> 3
    assert plan_of(single, spec_of(THREE, kubernetes_version=START)).allowed
    five = spec_of({**THREE, "10.0.0.4": ALL, "10.0.0.5": ALL}, kubernetes_version=START)
    assert plan_of(five, BASE).allowed and plan_of(BASE, five).allowed
    # but never a member replaced in the same update, nor three at once
    swapped = spec_of({"10.0.0.1": ALL, "10.0.0.2": ALL, "10.0.0.9": ALL}, kubernetes_version=START)
    assert any("change one such node" in r for r in plan_of(BASE, swapped).refusals)
    seven = spec_of({f"10.0.0.{i}": ALL for i in range(1, 8)}, kubernetes_version=START)
    assert any("change one such node" in r for r in plan_of(single, seven).refusals)


def test_versions_plugin_identity_and_phase():
    def refusals(after: ClusterSpec, **kw) -> str:
        return " | ".join(plan_of(BASE, after, **kw).refusals)

    assert "skips a minor" in refusals(BASE.model_copy(update={"kubernetes_version": VERSIONS[3]}))
    assert f"upgrade to {VERSIONS[2]} first" in refusals(
        BASE.model_copy(update={"kubernetes_version": VERSIONS[3]})
    )
    assert "cannot downgrade" in refusals(
        BASE.model_copy(update={"kubernetes_version": VERSIONS[0]})
    )
    assert "network_plugin cannot change from canal to calico" in refusals(
        BASE.model_copy(update={"network_plugin": "calico"})
    )
    renamed = BASE.model_copy(deep=True)
    renamed.nodes[2].hostname_override = "other"
    assert "its hostname cannot change in place" in refusals(renamed)
    assert "update-cluster changes a READY cluster: finish that first with provision-cluster" in (
        refusals(BASE, phase="FAILED", operation="provision")
    )
    resumed = plan_of(BASE, BASE, phase="FAILED", operation="update")
    assert resumed.allowed and resumed.resume and resumed.needs_rke
    assert version_key(VERSIONS[0]) < version_key(VERSIONS[3])


def test_live_cluster_is_compared_and_guards_etcd_removal():
    live = Live(True, version="v1.28.14", ready={"10.0.0.1": True, "10.0.0.2": False, "x": True})
    with_four = spec_of({**THREE, "10.0.0.4": ["worker"]}, kubernetes_version=START)
    plan = plan_of(with_four, BASE, live)
    assert plan.live["missing"] == ["10.0.0.3", "10.0.0.4"] and plan.live["unexpected"] == ["x"]
    assert plan.live["not_ready"] == ["10.0.0.2"] and plan.allowed  # a worker may go
    five = spec_of({**THREE, "10.0.0.4": ALL, "10.0.0.5": ALL}, kubernetes_version=START)
    four_etcd = five.model_copy(
        update={"nodes": [*five.nodes[:4], NodeSpec(address="10.0.0.5", roles=["worker"])]}
    )
    plan = plan_of(five, four_etcd, live)
    assert any("not Ready: quorum could be lost" in r for r in plan.refusals)
    assert not plan_of(BASE, BASE, Live(False, "down")).live["reachable"]


def test_the_plan_holds_no_secret():
    plan = plan_of(BASE, BASE.model_copy(update={"kubernetes_version": VERSIONS[2]}))
    text = json.dumps(plan.to_dict()) + plan.to_markdown()
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


# -- one lab cluster, updated -------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory, lab_rke, lab_supervisor, prefect_server):
    """A READY cluster at v1.28: .190 control plane, .190-.192 etcd and workers; .193 is a
    spare worker."""
    patch = pytest.MonkeyPatch()
    nodes = LabNodes(tmp_path_factory.mktemp("nodes"), 4, first_address=LAB_FIRST_ADDRESS)
    with nodes:
        env = Env(tmp_path_factory.mktemp("update"), nodes, lab_rke, patch, lab_supervisor)
        env.save_ssh(known_hosts="", host_key_policy="accept-new")  # keys recorded per cluster
        state = env.provision(cluster_spec(env))
        assert state.is_completed(), failure_message(state)
        try:
            yield env
        finally:  # no teardown (rke remove costs seconds): stop the cluster's API server
            lab_supervisor.call("stop", address=nodes.nodes[0].address)
            patch.undo()


def cluster_spec(env: Env, extra: bool = False, **fields) -> ClusterSpec:
    roles = [ALL, ["etcd", "worker"], ["etcd", "worker"]]  # the lab serves one control plane
    nodes = [
        NodeSpec(address=n.address, port=n.port, roles=r)
        for n, r in zip(env.lab.nodes[:3], roles, strict=True)
    ]
    if extra:
        spare = env.lab.nodes[3]
        nodes.append(NodeSpec(address=spare.address, port=spare.port, roles=["worker"]))
    fields.setdefault("kubernetes_version", START)
    return ClusterSpec(environment="test", name=env.name, nodes=nodes, **fields)


def update(env: Env, spec: ClusterSpec | dict):
    return update_cluster(spec=spec, **env.blocks, return_state=True)


def plan(env: Env, spec: ClusterSpec):
    blocks = {k: v for k, v in env.blocks.items() if k != "policy"}
    return plan_cluster(spec=spec, **blocks, return_state=True)


def ca_of(env: Env) -> str:
    state = json.loads(env.cluster.read_text("cluster.rkestate"))
    return state["currentState"]["certificatesBundle"]["kube-ca"]["certificatePEM"]


def applied_version(env: Env) -> str:
    state = json.loads(env.cluster.read_text("cluster.rkestate"))
    return state["currentState"]["rkeConfig"]["kubernetesVersion"]


def test_plan_cluster_is_read_only_and_publishes_its_plan(env: Env):
    before, status = env.logins(), env.cluster.read_text("status.json")
    history = sorted(p.name for p in env.cluster.history_dir.iterdir())
    state = plan(env, cluster_spec(env, extra=True, kubernetes_version=VERSIONS[2]))
    assert state.is_completed(), failure_message(state)
    result = state.result()
    assert result["allowed"] and result["add"][0]["address"] == env.lab.nodes[3].address
    assert (result["version_from"], result["version_to"]) == (START, VERSIONS[2])
    assert result["live"]["reachable"] and result["live"]["nodes"] == 3
    assert result["live"]["version"] == "v1.28.14" and not result["live"]["missing"]
    assert env.logins() == before and env.cluster.read_text("status.json") == status
    assert sorted(p.name for p in env.cluster.history_dir.iterdir()) == history
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"plan-test-{env.name}"]))
        )
    assert artifacts and "## Nodes to add" in artifacts[-1].data
    refused = plan(env, cluster_spec(env, network_plugin="calico")).result()
    assert not refused["allowed"] and "network_plugin cannot change" in refused["refusals"][0]


REFUSED = {
    "quorum": (lambda env: _one_etcd(env), "below the quorum of 2"),
    "skipped minor": (
        lambda env: cluster_spec(env, kubernetes_version=VERSIONS[3]),
        f"upgrade to {VERSIONS[2]} first",
    ),
    "downgrade": (lambda env: cluster_spec(env, kubernetes_version=VERSIONS[0]), "downgrade"),
    "plugin": (lambda env: cluster_spec(env, network_plugin="flannel"), "network_plugin cannot"),
    "unknown cluster": (
        lambda env: cluster_spec(env).model_copy(update={"name": f"nope{env.tag}"}),
        "create it with provision-cluster",
    ),
    "even etcd": (lambda env: _even_etcd(env), "use an odd count"),
}


def _one_etcd(env: Env) -> ClusterSpec:
    spec = cluster_spec(env)
    for node in spec.nodes[1:]:
        node.roles = ["worker"]
    return spec


def _even_etcd(env: Env) -> dict:
    spec = cluster_spec(env).model_dump(mode="json")
    spec["nodes"][2]["roles"] = ["worker"]
    return spec  # not a valid ClusterSpec: Prefect checks the parameter before the flow runs


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_update_touches_no_node(env: Env, case: str):
    make, expected = REFUSED[case]
    before, status = env.logins(), env.cluster.read_status()
    state = update(env, make(env))
    assert state.is_failed()
    assert expected in failure_message(state)
    assert env.logins() == before  # no SSH login: neither preflight nor rke ran
    assert env.cluster.read_status() == status  # the cluster's phase and spec are untouched
    assert not list(env.cluster.history_dir.glob("*-update"))


def test_add_a_worker_then_remove_it(env: Env):
    spare = env.lab.nodes[3]
    ca, known_hosts = ca_of(env), env.cluster.read_text("known_hosts")
    added = update(env, cluster_spec(env, extra=True))
    assert added.is_completed(), failure_message(added)
    assert added.result()["phase"] == "READY"
    config = yaml.safe_load(env.cluster.read_text("cluster.yml"))
    assert [n["address"] for n in config["nodes"]][-1] == spare.address
    assert spare.address not in known_hosts  # accepted when the update first reached it
    assert spare.address in env.cluster.read_text("known_hosts")
    live = plan(env, cluster_spec(env, extra=True)).result()
    assert not live["has_changes"] and live["live"]["nodes"] == 4
    assert env.provision(cluster_spec(env, extra=True)).is_completed()  # the spec is recorded

    old = env.provision(cluster_spec(env))
    assert old.is_failed() and "apply the change with update-cluster" in failure_message(old)

    removed = update(env, cluster_spec(env))
    assert removed.is_completed(), failure_message(removed)
    live = plan(env, cluster_spec(env)).result()
    assert not live["has_changes"] and live["live"]["nodes"] == 3  # deleted from Kubernetes
    assert not live["live"]["unexpected"]
    assert ca_of(env) == ca


def test_kill_9_of_rke_during_an_upgrade_converges_on_rerun(env: Env):
    """One minor up (v1.28 → v1.29); rke is killed mid-run, the rerun finishes with the same CA."""
    ca = ca_of(env)
    target = cluster_spec(env, kubernetes_version=VERSIONS[2])
    env.fault(pause_at="controlplane", pause_seconds=20)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("state", update(env, target)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not (victims := rke_pids(env.root)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victims, "rke never started"
        time.sleep(0.5)  # well into the run: rke paused before the control plane
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    finally:
        runner.join(timeout=120)
        env.fault()
    killed = outcome["state"]
    assert killed.is_failed() and "run update again: it resumes" in failure_message(killed)
    assert env.cluster.read_status().phase == "FAILED"

    rerun = update(env, target)
    assert rerun.is_completed(), failure_message(rerun)
    assert env.cluster.read_status().phase == "READY"
    assert applied_version(env) == VERSIONS[2] and ca_of(env) == ca
    live = plan(env, target).result()["live"]
    assert live["version"] == "v1.29.9" and live["nodes"] == 3


def test_cli_checks_the_spec_before_starting_a_run(tmp_path):
    """`update` (and `plan`) refuse a bad spec file locally (exit 2), as `create` does; the API
    named here does not exist, so reaching it would fail differently."""
    bad = tmp_path / "spec.yaml"
    bad.write_text("name: web\nnodes:\n- {address: 10.0.0.1, roles: [controlplane, worker]}\n")
    cli = str(Path(sys.executable).parent / "cluster-mgmt")
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    run = subprocess.run(  # `plan` reads the spec with the same helper
        [cli, "update", "--spec", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "no node has the etcd role" in run.stderr and "Traceback" not in run.stderr
