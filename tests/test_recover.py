"""recover-cluster-state and verify-backups against one lab cluster (real sshd, lab rke, the
cluster's lab API with real TLS, a real Prefect server): every recovery source brings back the
same CA; a foreign CA is refused with nothing written; the drill passes on a healthy cluster
and emits cluster.backup.failed when a backup is bad."""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.worker import EventsWorker
from typer.testing import CliRunner

from cluster_mgmt.atomic import write_dir
from cluster_mgmt.backups import snapshot_problem
from cluster_mgmt.driver import RkeDriver
from cluster_mgmt.kube import connect
from cluster_mgmt.recovery import same_certificate
from cluster_mgmt.state import utc_stamp
from deployments.cli import app
from flows.recover import recover_cluster_state
from flows.verify_backups import verify_backups
from tasks.rke import run_rke
from tests import pki
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 210  # nodes 127.0.0.210-212; the cluster's API on 127.0.0.210:6443

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def env(tmp_path_factory, lab_nodes, lab_rke, lab_supervisor):
    """ONE provisioned lab cluster for the whole module, with an etcd snapshot."""
    with pytest.MonkeyPatch.context() as patch:
        env = Env(tmp_path_factory.mktemp("recover"), lab_nodes, lab_rke, patch, lab_supervisor)
        state = env.provision()
        assert state.is_completed(), failure_message(state)
        cluster, key = env.cluster, lab_nodes.client_private_key

        @flow
        def take_snapshot():  # `rke etcd snapshot-save --name drill`, as snapshot-etcd runs it
            with cluster.lock("snapshot-etcd", "test"):
                config = cluster.read_text("cluster.yml")
                return run_rke(cluster, "snapshot", config, key, RkeDriver(lab_rke), name="drill")

        outcome = take_snapshot()
        assert outcome.result.ok, outcome.summary
        yield env


@pytest.fixture
def cluster(env: Env):
    """The module's cluster; each test leaves it with its original state, as it found it."""
    original = env.cluster.read_text("cluster.rkestate")
    yield env.cluster
    if env.cluster.read_text("cluster.rkestate") != original:
        env.cluster.write_text("cluster.rkestate", original)


def ca_of(text: str) -> str:
    state = json.loads(text)
    return state["currentState"]["certificatesBundle"]["kube-ca"]["certificatePEM"]


def recover(env: Env, source: str, entry: str | None = None):
    return recover_cluster_state(
        environment="test",
        name=env.name,
        source=source,
        entry=entry,
        **env.blocks,
        return_state=True,
    )


def assert_recovered(env: Env, state, ca: str) -> None:
    """Completed, the same CA, READY, and the API answers with the recovered kubeconfig."""
    assert state.is_completed(), failure_message(state)
    cluster = env.cluster
    assert ca_of(cluster.read_text("cluster.rkestate")) == ca
    assert cluster.read_status().phase == "READY"
    assert "state recovered from" in cluster.read_status().message
    with connect(cluster.read_text("kube_config_cluster.yml")) as kube:
        assert kube.call("GET", "/version")["gitVersion"]
    names = [p.name for p in cluster.history_copies()]
    assert any(n.endswith("-recover-state-promoted") for n in names)


def test_recover_from_history_then_provision_has_nothing_to_do(env: Env, cluster):
    ca = ca_of(cluster.read_text("cluster.rkestate"))
    cluster.path("cluster.rkestate").unlink()
    assert "recover-cluster-state" in failure_message(env.provision())
    assert_recovered(env, recover(env, "history"), ca)
    before = env.logins()
    assert env.provision().is_completed()  # READY with this spec: nothing to do, no node touched
    assert env.logins() == before


def test_recover_a_lost_directory_from_the_archive(env: Env, cluster):
    ca = ca_of(cluster.read_text("cluster.rkestate"))
    archived = cluster.archive()  # the whole directory is gone from its place
    assert not cluster.dir.exists()
    assert_recovered(env, recover(env, "archive", entry=archived.name), ca)
    for restored in ("cluster.yml", "customer_kube_config.yml"):
        assert cluster.read_text(restored) == (archived / restored).read_text()
    before = env.logins()
    assert env.provision().is_completed()  # spec hash and customer access came back too
    assert env.logins() == before
    shutil.rmtree(archived)


def test_recover_in_cluster_with_the_kubeconfig_from_history(env: Env, cluster):
    ca = ca_of(cluster.read_text("cluster.rkestate"))
    cluster.path("cluster.rkestate").unlink()
    cluster.path("kube_config_cluster.yml").unlink()
    state = recover(env, "in-cluster")
    assert_recovered(env, state, ca)
    assert "kube-system/full-cluster-state" in state.result()["origin"]


def test_recover_with_rke_util(env: Env, cluster):
    ca = ca_of(cluster.read_text("cluster.rkestate"))
    cluster.path("cluster.rkestate").write_text("{")  # broken: rke would mint a new CA
    state = recover(env, "rke-util")
    assert_recovered(env, state, ca)
    assert "rke util get-state-file" in state.result()["origin"]


def foreign_state(text: str) -> str:
    """The cluster's state with another kube-ca: what another cluster's rkestate looks like."""
    state = json.loads(text)
    for part in ("currentState", "desiredState"):
        ca = state[part]["certificatesBundle"]["kube-ca"]
        ca["certificatePEM"], ca["keyPEM"] = pki.cert_pem("foreign-ca"), pki.key_pem("foreign-ca")
    return json.dumps(state)


def test_a_foreign_ca_is_refused_and_nothing_is_promoted(env: Env, cluster, tmp_path: Path):
    foreign = foreign_state(cluster.read_text("cluster.rkestate"))
    cluster.path("cluster.rkestate").unlink()
    entry = write_dir(cluster.history_dir / f"{utc_stamp()}-foreign", {"cluster.rkestate": foreign})
    status, copies = cluster.read_status(), cluster.history_copies()
    state = recover(env, "history")
    assert state.is_failed()
    assert "not signed by the recovered kube-ca" in failure_message(state)
    assert cluster.read_text("cluster.rkestate") is None
    assert cluster.read_status() == status and cluster.history_copies() == copies
    shutil.rmtree(entry)

    # a lost directory is not re-made for a foreign archive
    aside = tmp_path / "aside"
    shutil.move(cluster.dir, aside)
    archive = env.root / "archive" / "test" / f"{env.name}-{utc_stamp()}"
    write_dir(archive, {"cluster.rkestate": foreign})
    state = recover(env, "archive")
    assert state.is_failed() and "not signed by the recovered kube-ca" in failure_message(state)
    assert not cluster.dir.exists()
    shutil.rmtree(archive)
    shutil.move(aside, cluster.dir)


def drill(env: Env):
    return verify_backups(
        environment="test",
        ssh_access=env.blocks["ssh_access"],
        state_volume=env.blocks["state_volume"],
        return_state=True,
    )


def test_verify_backups_passes_then_fails_on_bad_backups(env: Env, cluster):
    state = drill(env)
    assert state.is_completed(), state.message
    assert state.result() == {"artifact": "backups-test", "clusters": 1, "failed": []}
    with get_client(sync_client=True) as client:
        table = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["backups-test"]))
        )[-1]
    assert "passed" in str(table.data) and "drill.zip" in str(table.data)

    corrupt = cluster.history_copies()[-1]  # the newest copy, cut short as a torn write would
    text = (corrupt / "cluster.rkestate").read_text()
    entry = write_dir(
        cluster.history_dir / f"{utc_stamp()}-torn", {"cluster.rkestate": text[: len(text) // 2]}
    )
    assert drill(env).is_failed()
    shutil.rmtree(entry)

    snapshots = env.lab.nodes[0].root / "opt/rke/etcd-snapshots"
    moved = snapshots.with_name("aside")
    snapshots.rename(moved)
    assert drill(env).is_failed()
    moved.rename(snapshots)

    EventsWorker.drain_all(timeout=10)
    body = {
        "filter": {
            "resource": {"id": [f"cluster-mgmt.cluster.test.{env.name}"]},
            "event": {"name": ["cluster.backup.failed"]},
        },
        "limit": 50,
    }
    wanted = {"is not complete RKE state", "no etcd snapshot"}
    found: set[str] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and found != wanted:
        with get_client(sync_client=True) as client:
            events = client.request("POST", "/events/filter", json=body).json()["events"]
        found = {w for w in wanted for e in events if w in e["payload"]["reason"]}
        time.sleep(0.2)
    assert found == wanted


def snapshot_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_snapshot_checks_read_the_zip_as_rke_writes_it():
    state = json.dumps(
        {"currentState": {"certificatesBundle": {"kube-ca": {"certificatePEM": pki.cert_pem()}}}}
    )
    good = snapshot_zip({"backup/s1/member/snap/db": b"etcd", "backup/s1.rkestate": state})
    assert snapshot_problem(good, "s1.zip", pki.cert_pem()) is None
    assert "another CA" in snapshot_problem(good, "s1.zip", pki.cert_pem("other-ca"))
    torn = bytearray(good)
    torn[good.index(b"etcd")] ^= 0xFF  # a flipped byte in the data
    assert "CRC" in snapshot_problem(bytes(torn), "s1.zip")
    assert "not a readable zip" in snapshot_problem(good[: len(good) // 2], "s1.zip")
    empty = snapshot_zip({"backup/s1/member/snap/db": b""})
    assert "no etcd data" in snapshot_problem(empty, "s1.zip")
    broken_state = snapshot_zip({"backup/s1": b"etcd", "backup/s1.rkestate": b"{"})
    assert "not complete RKE state" in snapshot_problem(broken_state, "s1.zip")


def test_cli_recover_checks_the_source_before_starting_anything():
    result = CliRunner().invoke(app, ["recover", "test", "web", "--source", "backup"])
    assert result.exit_code == 2 and "history" in result.output


def test_a_node_keeping_another_ca_is_refused(env: Env, cluster, lab_nodes):
    """The API server answers with the recovered CA, but a node holds another kube-ca.pem."""
    ca = ca_of(cluster.read_text("cluster.rkestate"))
    on_node = lab_nodes.nodes[0].root / "etc/kubernetes/ssl/kube-ca.pem"
    as_deployed = on_node.read_text()
    assert same_certificate(as_deployed, ca)  # as rke's cert deployer put it
    cluster.path("cluster.rkestate").unlink()
    status = cluster.read_status()
    on_node.write_text(pki.cert_pem("foreign-ca"))
    try:
        state = recover(env, "history")
        assert state.is_failed()
        message = failure_message(state)
        assert f"node(s) {lab_nodes.nodes[0].address} keep another kube-ca" in message, message
        assert cluster.read_text("cluster.rkestate") is None and cluster.read_status() == status
    finally:
        on_node.write_text(as_deployed)
    state = recover(env, "history")
    assert_recovered(env, state, ca)
    assert "3 of 3 nodes keep its kube-ca" in cluster.read_status().message
