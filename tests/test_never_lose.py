"""Never lose a cluster: the volume's identity, the API's witness, host keys, races, limits."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.events.worker import EventsWorker
from prefect.exceptions import ObjectNotFound

from blocks import ClusterStateVolume, RkeSettings
from cluster_mgmt.identity import ClusterId
from cluster_mgmt.rke_config import dump_cluster_config, render_cluster_config
from cluster_mgmt.state import ClusterState, StateVolume
from tasks.locks import cluster_lock
from tasks.reporting import api_witness, emit_event_for
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 70

pytestmark = pytest.mark.usefixtures("prefect_server")


def ca_of(cluster: ClusterState) -> str:
    state = json.loads(cluster.read_text("cluster.rkestate"))
    return state["desiredState"]["certificatesBundle"]["kube-ca"]["certificatePEM"]


def read_limit(name: str):
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None


# -- a missing or wrong volume never looks like a new cluster ------------------------------------


def test_an_unmounted_volume_is_refused_before_any_node_is_touched(env: Env, tmp_path: Path):
    assert env.provision().is_completed()
    mount_point = tmp_path / "mnt"  # the EBS volume is not attached: an empty folder
    mount_point.mkdir()
    ClusterStateVolume(root=str(mount_point)).save(env.blocks["state_volume"], overwrite=True)
    before = env.logins()
    state = env.provision()
    assert state.is_failed()
    assert "has no volume marker" in failure_message(state)
    assert env.logins() == before and os.listdir(mount_point) == []


def test_a_known_cluster_whose_directory_is_gone_is_refused(env: Env, tmp_path: Path):
    assert env.provision().is_completed()
    ca = ca_of(env.cluster)
    lost = tmp_path / "lost"
    shutil.move(env.cluster.dir, lost)  # the directory is gone; the volume itself is fine
    before = env.logins()
    state = env.provision()
    assert state.is_failed()
    message = failure_message(state)
    assert "refusing to provision" in message and "would mint a new CA" in message
    assert "full-cluster-state" in message and "archive" in message
    assert "recover-cluster-state" in message and "--source" in message and "rke-util" in message
    assert env.logins() == before
    assert env.cluster.read_text("cluster.rkestate") is None
    # a refusal records nothing: no FAILED status, and the API's witness is not overwritten
    assert env.cluster.read_status() is None
    assert latest_artifact_description(env).startswith("READY")
    shutil.rmtree(env.cluster.dir)
    env.cluster.dir.mkdir(mode=0o700)  # an empty directory: no more state than a missing one
    empty = env.provision()
    assert empty.is_failed() and "refusing to provision" in failure_message(empty)
    assert env.logins() == before
    assert env.cluster.read_text("cluster.rkestate") is None
    shutil.rmtree(env.cluster.dir)
    shutil.move(lost, env.cluster.dir)  # recovered: the same request is a no-op again
    again = env.provision()
    assert again.is_completed(), failure_message(again)
    assert ca_of(env.cluster) == ca


def latest_artifact_description(env: Env) -> str:
    """The description of the cluster artifact's newest version (its one-line status)."""
    with get_client(sync_client=True) as client:
        (latest,) = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=[ClusterId("test", env.name).artifact_key])
            ),
            limit=1,
        )
    return latest.description or ""


def witness_of(env: Env, live: bool) -> str | None:
    """The API's witness for the cluster, polled until it says `live` (events reach the
    database asynchronously) or 20 s passed."""
    EventsWorker.drain_all(timeout=10)
    deadline = time.monotonic() + 20
    witness = api_witness("test", env.name)
    while (witness is not None) != live and time.monotonic() < deadline:
        time.sleep(0.2)
        witness = api_witness("test", env.name)
    return witness


def test_a_cluster_known_only_by_its_event_is_refused(env: Env):
    """Its artifact is gone (deleted, or never written to this API), but the
    `cluster.provisioned` event on its resource still says it reached READY."""
    emit_event_for("test", env.name, "cluster.provisioned", {"nodes": 3})
    witness = witness_of(env, live=True)
    assert witness is not None and "event cluster.provisioned" in witness
    assert f"cluster-mgmt.cluster.test.{env.name}" in witness
    before = env.logins()
    state = env.provision()
    assert state.is_failed()
    message = failure_message(state)
    assert "refusing to provision" in message and "event cluster.provisioned" in message
    assert env.logins() == before
    assert env.cluster.read_text("cluster.rkestate") is None
    # the cluster is really gone: the operator records it with the command the refusal names
    command = message.rsplit("`prefect ", 1)[1].rstrip("`").split()
    assert command[:3] == ["event", "emit", "cluster.deleted"]
    prefect = str(Path(sys.executable).parent / "prefect")
    done = subprocess.run(
        [prefect, *command], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert witness_of(env, live=False) is None  # the newer event says it is gone


# -- host keys -----------------------------------------------------------------------------------


def test_accept_new_records_keys_and_a_lost_known_hosts_is_not_trusted_again(env: Env):
    env.save_ssh(known_hosts="", host_key_policy="accept-new")
    assert env.provision().is_completed()
    recorded = env.cluster.read_text("known_hosts")
    assert sorted(recorded.splitlines()) == sorted(env.lab.known_hosts().splitlines())

    (env.cluster.dir / "known_hosts").unlink()
    env.cluster.write_status("FAILED", "provision", "earlier", "interrupted")
    before = env.logins()
    state = env.provision()
    assert state.is_failed()
    message = failure_message(state)
    assert "accept-new is not applied" in message and "restore it from" in message
    assert env.cluster.read_text("known_hosts") is None
    assert [b - a for a, b in zip(before, env.logins(), strict=True)] == [0, 0, 0]


def test_teardown_skips_an_unreachable_node(env: Env):
    assert env.provision().is_completed()
    env.lab.nodes[2].stop()
    try:
        state = env.teardown()
        assert state.is_completed(), failure_message(state)
    finally:
        env.lab.nodes[2].start()
    assert not env.cluster.dir.exists()
    assert len(StateVolume(env.root).archived("test", env.name)) == 1


def test_teardown_refuses_a_changed_host_key(env: Env):
    assert env.provision().is_completed()
    env.lab.nodes[1].rotate_host_key()
    try:
        state = env.teardown()
        assert state.is_failed()
        assert "HOST KEY CHANGED" in failure_message(state)
        assert env.cluster.read_status().phase == "READY"  # refused: left as it was
        assert env.cluster.read_text("cluster.rkestate") is not None
    finally:
        env.save_ssh(known_hosts=env.lab.known_hosts())


def test_a_host_key_changed_during_rke_up_fails_loudly(env: Env):
    env.fault(pause_at="addons", pause_seconds=3)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("state", env.provision()))
    runner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = env.cluster.read_status() if env.cluster.dir.exists() else None
        if status is not None and status.message == "running rke up":
            break
        time.sleep(0.05)
    env.lab.nodes[0].rotate_host_key()
    runner.join(timeout=120)
    try:
        state = outcome["state"]
        assert state.is_failed()
        message = failure_message(state)
        assert "no longer matches after rke up" in message and env.lab.nodes[0].address in message
        assert env.cluster.read_status().phase == "FAILED"
    finally:
        env.save_ssh(known_hosts=env.lab.known_hosts())


def test_a_host_key_changed_during_rke_remove_fails_loudly(env: Env):
    # What teardown needs of a cluster is its cluster.yml: skip the provision (time).
    env.cluster.create()
    rke = RkeSettings(binary=env.rke)
    spec = env.spec().with_version(
        rke.supported_kubernetes_versions, rke.default_kubernetes_version
    )
    config = render_cluster_config(spec, ssh_user=env.lab.user)
    env.cluster.write_text("cluster.yml", dump_cluster_config(config))
    env.cluster.write_status("READY", "provision", "earlier", "rke up succeeded")
    env.fault(pause_at="remove", pause_seconds=2)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("state", env.teardown()))
    runner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = env.cluster.read_status() if env.cluster.dir.exists() else None
        if status is not None and status.message == "running rke remove":
            break
        time.sleep(0.05)
    env.lab.nodes[1].rotate_host_key()
    runner.join(timeout=120)
    try:
        state = outcome["state"]
        assert state.is_failed()
        message = failure_message(state)
        assert "no longer matches after rke remove" in message
        assert env.lab.nodes[1].address in message
        assert env.cluster.read_status().phase == "FAILED"  # not DELETED, not archived
        assert StateVolume(env.root).archived("test", env.name) == []
    finally:
        env.fault()
        env.save_ssh(known_hosts=env.lab.known_hosts())


# -- races ---------------------------------------------------------------------------------------


def test_two_teardowns_at_once_leave_no_phantom(env: Env, tmp_path: Path):
    assert env.provision().is_completed()
    env.fault(pause_at="remove", pause_seconds=2)
    script = tmp_path / "teardown.py"
    script.write_text(
        "from flows.teardown import teardown_cluster\n"
        f"s = teardown_cluster(environment='test', name={env.name!r}, **{env.blocks!r}, "
        "return_state=True)\n"
        "print(s.type.value, s.message, flush=True)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs)
    assert outputs[0].startswith("COMPLETED"), outputs
    assert outputs[1].startswith("FAILED") and f"no cluster test/{env.name}" in outputs[1]
    assert not env.cluster.dir.exists()
    assert StateVolume(env.root).clusters() == []
    assert len(StateVolume(env.root).archived("test", env.name)) == 1


def test_the_api_witness_is_read_under_the_cluster_lock(env: Env, monkeypatch: pytest.MonkeyPatch):
    """A provision that waited for a teardown must see the deletion the teardown recorded:
    the witness is asked only once the cluster's lock is held (read earlier, a provision
    queued behind a teardown was refused as "would mint a new CA")."""
    import flows.provision

    held = []

    def witness(environment: str, name: str) -> None:
        fd = os.open(env.cluster.dir / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        raise RuntimeError("stop here: only the witness's timing is under test")

    monkeypatch.setattr(flows.provision, "api_witness", witness)
    assert env.provision().is_failed()
    assert held == [True]


def test_a_denial_never_takes_the_cluster_lock(env: Env, monkeypatch: pytest.MonkeyPatch):
    """A denied request on an existing cluster records its decision without the flock, so a
    legitimate run holding (or about to take) the lock never sees it as busy."""
    assert env.provision().is_completed()
    real_lock = ClusterState.lock

    def no_lock(*args, **kwargs):
        raise AssertionError("a denial took the cluster's lock")

    with real_lock(env.cluster, "provision", "legitimate-run"):
        monkeypatch.setattr(ClusterState, "lock", no_lock)
        denied = env.provision(env.spec().model_copy(update={"network_plugin": "none"}))
        monkeypatch.setattr(ClusterState, "lock", real_lock)
    assert denied.is_failed() and "denied" in failure_message(denied)
    assert "lock" not in failure_message(denied)
    decisions = sorted(env.cluster.history_dir.glob("*-provision-policy/policy-decision.json"))
    assert json.loads(decisions[-1].read_text())["allowed"] is False


# -- the Prefect limit ---------------------------------------------------------------------------


def test_an_inactive_limit_is_reactivated_and_removed_after_teardown(env: Env):
    name = ClusterId("test", env.name).lock_name
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=1, active=False)
        )
    assert env.provision().is_completed()
    limit = read_limit(name)
    assert limit.active and limit.limit == 1 and limit.active_slots == 0
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=False))
    with cluster_lock("test", env.name, timeout_seconds=5):
        assert read_limit(name).active_slots == 1  # really held, not silently skipped
    assert env.teardown().is_completed()
    assert read_limit(name) is None


HOLDER = """
import sys, time
from tasks.locks import cluster_lock
from tasks.reporting import api_witness, emit_event_for
with cluster_lock("test", sys.argv[1]):
    print("held", flush=True)
    time.sleep(3600)
"""


def test_a_dead_holders_lease_frees_the_cluster(env: Env):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, env.name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert read_limit(ClusterId("test", env.name).lock_name).active_slots == 1
    finally:
        holder.kill()
        holder.wait()
    # the lease (60 s, Prefect's minimum) expires and the server frees the slot
    with cluster_lock("test", env.name, timeout_seconds=150):
        assert read_limit(ClusterId("test", env.name).lock_name).active_slots == 1


def test_init_command_initialises_a_volume_once(tmp_path: Path):
    root = tmp_path / "volume"
    cli = [str(Path(sys.executable).parent / "cluster-mgmt"), "init", "--state-root", str(root)]
    first = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    marker = StateVolume(root).check_usable()
    assert first.stdout.strip().endswith(f"volume id {marker.volume_id}")
    again = subprocess.run(
        [*cli, "--ebs-volume-id", "vol-0abc"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "initialised for EBS volume (none)" in again.stderr
    assert "Traceback" not in again.stderr
    assert StateVolume(root).check_usable() == marker
