"""provision-cluster and teardown-cluster through a real Prefect server, real sshd nodes, lab rke."""

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
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

from blocks import ClusterStateVolume, RkeSettings
from flows.provision import provision_cluster
from tests.conftest import AUTH_STRING
from tests.flowenv import Env, assert_fails_cleanly, failure_message

LAB_FIRST_ADDRESS = 20
RKE_FILES = ("cluster.yml", "cluster.rkestate", "kube_config_cluster.yml")

pytestmark = pytest.mark.usefixtures("prefect_server")


def ca_of(rkestate: str) -> str:
    return json.loads(rkestate)["desiredState"]["certificatesBundle"]["kube-ca"]["certificatePEM"]


def assert_parses(cluster) -> None:
    for name in RKE_FILES:
        text = cluster.read_text(name)
        if text is not None:
            (json.loads if name.endswith("rkestate") else yaml.safe_load)(text)


def test_provision_teardown_and_provision_again(env: Env):
    state = env.provision()
    assert state.is_completed(), failure_message(state)
    result = state.result()
    assert result["phase"] == "READY"
    cluster = env.cluster
    for name in (*RKE_FILES, "status.json"):
        assert (cluster.dir / name).stat().st_mode & 0o777 == 0o600
    assert cluster.dir.stat().st_mode & 0o777 == 0o700
    first_ca = json.loads(cluster.read_text("cluster.rkestate"))["currentState"][
        "certificatesBundle"
    ]["kube-ca"]
    kubeconfig = yaml.safe_load(cluster.read_text("kube_config_cluster.yml"))
    assert (
        kubeconfig["clusters"][0]["cluster"]["server"] == f"https://{env.lab.nodes[0].address}:6443"
    )
    assert "BEGIN" not in cluster.read_text("cluster.yml")  # the key is referenced, never inlined

    ups = len(list(cluster.history_dir.glob("*-up")))
    again = env.provision()
    assert again.is_completed() and again.result()["phase"] == "READY"
    assert len(list(cluster.history_dir.glob("*-up"))) == ups  # same spec, READY: rke not run
    assert (
        json.loads(cluster.read_text("cluster.rkestate"))["currentState"]["certificatesBundle"][
            "kube-ca"
        ]
        == first_ca
    )

    down = env.teardown()
    assert down.is_completed(), failure_message(down)
    assert down.result()["phase"] == "DELETED"
    archived = Path(down.result()["archive"])
    assert not cluster.dir.exists() and (archived / "cluster.rkestate").exists()
    assert json.loads((archived / "status.json").read_text())["phase"] == "DELETED"

    reborn = env.provision()
    assert reborn.is_completed(), failure_message(reborn)
    new_ca = json.loads(env.cluster.read_text("cluster.rkestate"))["currentState"][
        "certificatesBundle"
    ]["kube-ca"]
    assert new_ca["certificatePEM"] != first_ca["certificatePEM"]


def test_one_node_cluster(env: Env):
    state = env.provision(env.spec(count=1))
    assert state.is_completed(), failure_message(state)
    config = yaml.safe_load(env.cluster.read_text("cluster.yml"))
    assert config["nodes"][0]["role"] == ["controlplane", "etcd", "worker"]


def test_changed_host_key_fails_before_rke(env: Env):
    victim = env.lab.nodes[1]
    victim.rotate_host_key()
    try:
        before = env.logins()
        state = env.provision()
        assert state.is_failed()
        message = failure_message(state)
        assert "HOST KEY CHANGED" in message and victim.address in message
        # preflight logged in once to each other node; rke (which logs in again) never ran
        after = env.logins()
        assert after[1] == before[1]
        assert after[0] - before[0] == 1
        assert env.cluster.read_status().phase == "FAILED"
        assert env.cluster.read_text("cluster.rkestate") is None
    finally:
        env.save_ssh(known_hosts=env.lab.known_hosts())


def test_unreachable_node_fails_preflight(env: Env):
    node = env.lab.nodes[2]
    node.stop()
    try:
        state = env.provision()
        assert state.is_failed()
        assert "preflight failed" in failure_message(state) and node.address in failure_message(
            state
        )
        assert env.cluster.read_text("cluster.rkestate") is None
    finally:
        node.start()


def test_rke_failure_midway_then_rerun_converges(env: Env):
    env.fault(fail_at="worker")
    state = env.provision()
    assert state.is_failed()
    status = env.cluster.read_status()
    assert status.phase == "FAILED" and status.rke_state_written
    assert env.cluster.read_text("cluster.rkestate")  # RKE's new state was promoted
    ca = json.loads(env.cluster.read_text("cluster.rkestate"))["desiredState"][
        "certificatesBundle"
    ]["kube-ca"]
    env.fault()
    rerun = env.provision()
    assert rerun.is_completed(), failure_message(rerun)
    assert (
        json.loads(env.cluster.read_text("cluster.rkestate"))["currentState"]["certificatesBundle"][
            "kube-ca"
        ]["certificatePEM"]
        == ca["certificatePEM"]
    )


def test_missing_rkestate_is_refused_before_rke(env: Env):
    assert env.provision().is_completed()
    (env.cluster.dir / "cluster.rkestate").unlink()
    before = env.logins()
    state = env.provision()
    assert state.is_failed()
    message = failure_message(state)
    assert "full-cluster-state" in message and "history" in message
    assert env.logins() == before
    assert env.cluster.read_text("cluster.rkestate") is None


def test_busy_cluster_is_refused_with_the_holder(env: Env):
    env.cluster.create()
    with env.cluster.lock("teardown", "run-123"):
        state = env.provision()
    assert state.is_failed()
    assert "operation teardown in progress (flow run run-123)" in failure_message(state)


def test_concurrent_provisions_never_interleave(env: Env, tmp_path: Path):
    env.fault(pause_at="certs", pause_seconds=4)
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom cluster_mgmt.spec import ClusterSpec\nfrom flows.provision import provision_cluster\n"
        f"s = provision_cluster(spec=ClusterSpec.model_validate_json(sys.argv[1]), **{env.blocks!r}, return_state=True)\n"
        "print(s.type.value, flush=True)\n"
    )
    spec = env.spec().model_dump_json()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), spec], stdout=subprocess.PIPE, text=True, env=os.environ
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    assert outputs == ["COMPLETED", "COMPLETED"]
    # one rke up ran; the second run found the cluster READY with the same spec
    ups = [p for p in env.cluster.history_dir.iterdir() if p.name.endswith("-up")]
    assert len(ups) == 1
    assert env.cluster.read_status().phase == "READY"


@pytest.mark.parametrize(
    ("existing", "when"),
    [(False, "1 s into rke"), (False, "1 s after the first write"), (True, "1 s into rke")],
    ids=["fresh-first-state-write", "fresh-second-state-write", "existing-cluster"],
)
def test_kill_9_of_rke_leaves_parseable_state_and_rerun_converges(env: Env, existing, when):
    if existing:
        assert env.provision().is_completed()
        # an interrupted run left FAILED: the next provision runs rke up again
        env.cluster.write_status("FAILED", "provision", "earlier-run", "interrupted")
    # each state write takes 3 s: a kill 1 s into rke lands in the first one
    env.fault(slow_state_write=True, pause_at="worker", pause_seconds=60)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("state", env.provision()))
    runner.start()
    deadline = time.monotonic() + 30
    killed = False
    while not killed and time.monotonic() < deadline:
        for pid in _rke_pids(env.root):
            while "after" in when and env.cluster.read_text("cluster.rkestate") is None:
                time.sleep(0.05)  # until the first complete write has been kept
            time.sleep(1)
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.02)
    runner.join(timeout=60)
    assert killed
    assert outcome["state"].is_failed()
    assert_parses(env.cluster)
    kept = env.cluster.read_text("cluster.rkestate")
    assert (kept is not None) == ("after" in when or existing)  # complete writes kept at once
    env.fault()
    rerun = env.provision()
    assert rerun.is_completed(), failure_message(rerun)
    assert_parses(env.cluster)
    if kept:  # the CA RKE had already written (and maybe deployed) is the one kept
        assert ca_of(env.cluster.read_text("cluster.rkestate")) == ca_of(kept)


def _rke_pids(root: Path) -> list[int]:
    """`rke up` processes running in a staging directory under `root` (ours, no one else's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                cwd = (proc / "cwd").resolve()
            except OSError:
                continue
            ours = cwd.is_relative_to(root) and cwd.name.startswith(".staging-")
            if ours and any(part.endswith(b"lab-rke") for part in cmd[:2]) and b"up" in cmd:
                pids.append(int(proc.name))
    return pids


def test_no_secret_in_logs_results_or_artifacts(env: Env):
    state = env.provision()
    assert state.is_completed(), failure_message(state)
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    key_body = "".join(env.lab.client_private_key.strip().splitlines()[1:-1])
    chunks = [key_body[i : i + 20] for i in range(0, len(key_body) - 20, 20)]
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"cluster-test-{env.name}"]))
        )
        flow_run = client.read_flow_run(run_id)
    assert logs and artifacts
    text = "\n".join(log.message for log in logs) + json.dumps(state.result())
    text += "".join(str(a.data) for a in artifacts) + json.dumps(flow_run.parameters)
    assert any("rke:" in log.message for log in logs)
    state_doc = json.loads(env.cluster.read_text("cluster.rkestate"))
    admin_key = state_doc["currentState"]["certificatesBundle"]["kube-admin"]["keyPEM"]
    kubeconfig = yaml.safe_load(env.cluster.read_text("kube_config_cluster.yml"))
    secrets = [
        *chunks,
        "".join(admin_key.strip().splitlines()[1:-1])[:40],
        kubeconfig["users"][0]["user"]["client-key-data"][:40],
        AUTH_STRING,
    ]
    for secret in secrets:
        assert secret not in text
    assert "PRIVATE KEY" not in text


def test_a_different_spec_is_refused_and_the_cluster_stays_ready(env: Env):
    assert env.provision().is_completed()
    ups = len(list(env.cluster.history_dir.glob("*-up")))
    state = env.provision(env.spec().model_copy(update={"network_plugin": "calico"}))
    assert "different spec (changed: network.plugin)" in failure_message(state)
    assert_fails_cleanly(state, "apply the change with update-cluster")
    assert env.cluster.read_status().phase == "READY"
    assert len(list(env.cluster.history_dir.glob("*-up"))) == ups
    assert env.provision().is_completed()  # the original spec: nothing to do
    assert len(list(env.cluster.history_dir.glob("*-up"))) == ups


def test_missing_block_names_itself_and_how_to_create_it(env: Env):
    state = provision_cluster(
        spec=env.spec(), **{**env.blocks, "ssh_access": "nope"}, return_state=True
    )
    assert state.is_failed()
    assert "block node-ssh-access/nope does not exist" in failure_message(state)
    assert "cluster-mgmt bootstrap" in failure_message(state)
    assert os.listdir(env.root) == ["cluster-mgmt-volume.json"]


def test_missing_rke_binary_and_unwritable_root_fail_before_side_effects(env: Env, tmp_path: Path):
    RkeSettings(binary=str(tmp_path / "no-rke")).save(env.blocks["rke_settings"], overwrite=True)
    before = env.logins()
    state = env.provision()
    assert state.is_failed() and "rke-settings.binary" in failure_message(state)
    assert env.logins() == before and os.listdir(env.root) == ["cluster-mgmt-volume.json"]

    RkeSettings(binary=env.rke).save(env.blocks["rke_settings"], overwrite=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ClusterStateVolume(root=str(blocker / "state")).save(env.blocks["state_volume"], overwrite=True)
    state = env.provision()
    assert state.is_failed() and "does not exist: the volume is not mounted" in failure_message(
        state
    )
    assert env.logins() == before and not blocker.is_dir()


def test_lifecycle_events_reach_the_api(env: Env):
    assert env.provision().is_completed()
    env.fault(fail_at="init")
    env.cluster.write_status("FAILED", "provision", "earlier-run", "interrupted")
    assert env.provision().is_failed()
    env.fault()
    assert env.teardown().is_completed()
    EventsWorker.drain_all(timeout=10)
    resource = f"cluster-mgmt.cluster.test.{env.name}"
    body = {"filter": {"resource": {"id": [resource]}}, "limit": 50}
    expected = {"cluster.provisioned", "cluster.operation.failed", "cluster.deleted"}
    deadline = time.monotonic() + 20
    seen: set[str] = set()
    while time.monotonic() < deadline and not expected <= seen:  # health events come too
        with get_client(sync_client=True) as client:
            response = client.request("POST", "/events/filter", json=body)
        seen = {e["event"] for e in response.json()["events"]}
        time.sleep(0.5)
    assert expected <= seen
