"""Tests of the state volume: layout, atomicity under kill -9, lock, staging, history, archive."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import pytest

from cluster_mgmt import state
from cluster_mgmt.state import (
    ClusterBusyError,
    ClusterNotFoundError,
    ClusterState,
    Promotion,
    StateError,
    StateMissingError,
    StateVolume,
    Status,
    VolumeError,
    atomic_write,
)
from tests.pki import b64, cert_pem, key_pem

ROOT_DIR = Path(__file__).resolve().parents[1]


def rkestate(version: int, padding: int = 0) -> str:
    """An RKE state file of the shape RKE writes (cluster/state.go FullState), real PEM inside."""
    certs = {
        "kube-ca": {"certificatePEM": cert_pem("kube-ca"), "keyPEM": key_pem("kube-ca")},
        "kube-service-account-token": {"certificatePEM": "", "keyPEM": key_pem("sa")},
    }
    state = {"rkeConfig": {"kubernetesVersion": "v1.30.5-rancher1-1"}, "certificatesBundle": certs}
    doc = {"desiredState": state, "currentState": state, "version": version, "pad": "x" * padding}
    return json.dumps(doc, indent=2)


def kubeconfig(server: str = "https://127.0.0.1:6443") -> str:
    """An admin kubeconfig laid out like RKE's (pki/kubeconfig.go)."""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters:
        - cluster:
            api-version: v1
            certificate-authority-data: {b64(cert_pem("kube-ca"))}
            server: "{server}"
          name: "prod-eu-web"
        contexts:
        - context:
            cluster: "prod-eu-web"
            user: "kube-admin-prod-eu-web"
          name: "prod-eu-web"
        current-context: "prod-eu-web"
        users:
        - name: "kube-admin-prod-eu-web"
          user:
            client-certificate-data: {b64(cert_pem("kube-admin"))}
            client-key-data: {b64(key_pem("kube-admin"))}
        """)


def cut_inside_key(text: str, keep: int | None = None) -> str:
    """Truncate inside client-key-data where the base64 still decodes but the PEM is cut."""
    start = text.index("client-key-data: ") + len("client-key-data: ")
    length = len(text[start:].split("\n", 1)[0])
    return text[: start + (keep if keep is not None else length // 8 * 4)]


def without_key(text: str) -> str:
    """The kubeconfig with a user that has a certificate but no key."""
    return "".join(line for line in text.splitlines(True) if "client-key-data" not in line)


def rkestate_with_cut_ca() -> str:
    """Valid JSON whose CA certificate is cut short (a torn write re-serialised)."""
    doc = json.loads(rkestate(2))
    pem = doc["desiredState"]["certificatesBundle"]["kube-ca"]["certificatePEM"]
    doc["desiredState"]["certificatesBundle"]["kube-ca"]["certificatePEM"] = pem[: len(pem) // 2]
    return json.dumps(doc)


def with_cut_second_block(pem: str) -> str:
    """A complete PEM followed by the start of a second one (a torn append)."""
    return pem + pem[:200]


def kubeconfig_with_cut_second_certificate() -> str:
    whole = b64(cert_pem("kube-admin"))
    return kubeconfig().replace(whole, b64(with_cut_second_block(cert_pem("kube-admin"))))


def kubeconfig_with_cut_second_key() -> str:
    whole = b64(key_pem("kube-admin"))
    return kubeconfig().replace(whole, b64(with_cut_second_block(key_pem("kube-admin"))))


def rkestate_with_cut_second_ca_block() -> str:
    doc = json.loads(rkestate(2))
    bundle = doc["desiredState"]["certificatesBundle"]["kube-ca"]
    bundle["certificatePEM"] = with_cut_second_block(bundle["certificatePEM"])
    return json.dumps(doc)


CLUSTER_YML = "cluster_name: prod-eu-web\nnodes:\n- address: 10.0.0.1\n  role: [etcd]\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        check=False,
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,
    )


def spawn_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def volume(tmp_path: Path) -> StateVolume:
    vol = StateVolume(tmp_path / "root", history_limit=20)
    vol.initialise()
    return vol


@pytest.fixture
def cluster(volume: StateVolume) -> ClusterState:
    cs = volume.cluster("prod", "eu-web")
    cs.create()
    cs.write_text("cluster.yml", CLUSTER_YML)
    return cs


def provision(cs: ClusterState, version: int = 1) -> None:
    """Run a fake `rke up` in staging that writes state the way RKE does (plain writes)."""
    with cs.staging("up") as stage:
        (stage / "cluster.rkestate").write_text(rkestate(version))
        (stage / "kube_config_cluster.yml").write_text(kubeconfig())


def history_names(cs: ClusterState) -> list[str]:
    return sorted(p.name for p in cs.history_dir.iterdir())


def hidden_entries(cs: ClusterState) -> list[str]:
    return sorted(p.name for p in cs.dir.iterdir() if p.name.startswith(".") and p.name != ".lock")


# -- layout, modes, names ---------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_layout_and_modes_do_not_depend_on_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        vol = StateVolume(tmp_path / "vol" / "root")
        vol.initialise()
        cs = vol.cluster("prod", "eu-web")
        cs.create()
        cs.write_text("cluster.yml", CLUSTER_YML)
        cs.write_text("resources/quota.yaml", "kind: ResourceQuota\n")
        cs.snapshot_history("up")
    finally:
        os.umask(old)
    assert cs.dir == tmp_path / "vol/root/environments/prod/clusters/eu-web"
    created = [tmp_path / "vol", vol.root, vol.root / "environments", cs.dir.parent.parent]
    for directory in [*created, cs.dir.parent, cs.dir, cs.dir / "resources", cs.history_dir]:
        assert mode(directory) == 0o700, directory
    (entry,) = cs.history_dir.iterdir()
    assert mode(entry) == mode(entry / "resources") == 0o700
    files = [cs.dir / "cluster.yml", cs.dir / "resources/quota.yaml", entry / "cluster.yml"]
    for path in [*files, entry / "resources/quota.yaml"]:
        assert mode(path) == 0o600, path
    assert (entry / "cluster.yml").read_text() == CLUSTER_YML
    assert cs.resource_names() == ["quota"]
    assert sorted(os.listdir(vol.root)) == ["cluster-mgmt-volume.json", "environments"]


@pytest.mark.parametrize(
    ("environment", "name"),
    [
        ("Prod", "web"),
        ("pr-od", "web"),
        ("a" * 21, "web"),
        ("", "web"),
        ("prod", "-web"),
        ("prod", "web-"),
        ("prod", "We"),
        ("prod", "a" * 41),
        ("prod", "../etc"),
        ("prod", "web\n"),
    ],
)
def test_invalid_names_are_refused(volume: StateVolume, environment: str, name: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        volume.cluster(environment, name)


def test_only_known_files_can_be_written(cluster: ClusterState) -> None:
    for bad in ["../x", "notes.txt", "resources/../cluster.yml", "resources/A.yaml", ".lock"]:
        with pytest.raises(ValueError, match="unknown state file"):
            cluster.write_text(bad, "x")
    with pytest.raises(ValueError, match="not a valid cluster.rkestate"):
        cluster.write_text("cluster.rkestate", rkestate(1)[:-10])
    assert not (cluster.dir / "cluster.rkestate").exists()
    assert cluster.read_text("known_hosts") is None
    cluster.write_text("known_hosts", "node1 ssh-ed25519 AAAA\n")
    assert cluster.read_text("known_hosts") == "node1 ssh-ed25519 AAAA\n"


def test_clusters_lists_existing_clusters_only(volume: StateVolume) -> None:
    for env, name in [
        ("prod", "a"),
        ("prod", "b"),
        ("dev", "c"),
        ("dev", "empty"),
        ("dev", "gone"),
    ]:
        volume.cluster(env, name).create()
    volume.cluster("prod", "b").write_status("PENDING", "provision", "r1", "queued")
    volume.cluster("prod", "a").write_text("cluster.yml", CLUSTER_YML)
    volume.cluster("dev", "c").write_text("cluster.yml", CLUSTER_YML)
    volume.cluster("dev", "gone").write_text("cluster.yml", CLUSTER_YML)
    volume.cluster("dev", "gone").archive()
    assert [(c.environment, c.name) for c in volume.clusters()] == [
        ("dev", "c"),
        ("prod", "a"),
        ("prod", "b"),
    ]
    assert [c.name for c in volume.clusters("prod")] == ["a", "b"]
    assert volume.clusters("nosuch") == []


# -- status -----------------------------------------------------------------------------------


def test_status_fields_spec_hash_and_sticky_rke_flag(cluster: ClusterState) -> None:
    assert cluster.read_status() is None
    first = cluster.write_status("PROVISIONING", "provision", "run-1", "rke up", spec_hash="h1")
    assert json.loads((cluster.dir / "status.json").read_text()).keys() == {
        "phase",
        "operation",
        "flow_run_id",
        "message",
        "updated_at",
        "spec_hash",
        "rke_state_written",
    }
    assert first.updated_at.endswith("+00:00")
    cluster.mark_rke_state_written()
    later = cluster.write_status("READY", "provision", "run-1", "done")
    assert later.spec_hash == "h1" and later.rke_state_written
    assert cluster.read_status() == later
    assert Status.from_json(later.to_json()) == later
    with pytest.raises(ValueError, match="unknown phase"):
        cluster.write_status("RUNNING", "provision", "run-1", "x")
    assert cluster.read_status() == later
    # a field written by a newer release is ignored, so older workers keep running
    assert Status.from_json(json.dumps({**json.loads(later.to_json()), "extra": 1})) == later
    assert mode(cluster.dir / "status.json") == 0o600


# -- atomic write -----------------------------------------------------------------------------


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    old = os.umask(0o077)
    try:
        atomic_write(target, "one")
        atomic_write(target, b"two")
        atomic_write(tmp_path / "g", "x", mode=0o640)
    finally:
        os.umask(old)
    assert target.read_text() == "two" and mode(target) == 0o600
    assert mode(tmp_path / "g") == 0o640
    assert sorted(os.listdir(tmp_path)) == ["f.json", "g"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    atomic_write(target, "old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


WRITER = """
    import sys
    from pathlib import Path
    from cluster_mgmt.atomic import atomic_write
    path, contents = Path(sys.argv[1]), [Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()]
    plain = sys.argv[4] == "plain"
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        if plain:
            path.write_bytes(contents[i % 2])
        else:
            atomic_write(path, contents[i % 2])
"""


def kill_writer_repeatedly(tmp_path: Path, how: str, iterations: int = 20) -> list[str]:
    """kill -9 a writer alternating two large JSON files; what each kill left: a, b or torn."""
    rng = random.Random(1234)
    a = json.dumps({"v": "a" * 3_000_000}).encode()
    b = json.dumps({"v": "b" * 2_000_000, "w": list(range(1000))}).encode()
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    target = tmp_path / "work" / "state.json"
    target.parent.mkdir()
    atomic_write(target, a)
    seen = []
    for _ in range(iterations):
        proc = spawn_python(WRITER, str(target), str(tmp_path / "a"), str(tmp_path / "b"), how)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.005, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stdin.close()
        data = target.read_bytes()
        seen.append("a" if data == a else "b" if data == b else "torn")
    return seen


def test_atomic_write_survives_kill_9(tmp_path: Path) -> None:
    seen = kill_writer_repeatedly(tmp_path, "atomic")
    assert "torn" not in seen, seen
    assert {"a", "b"} <= set(seen), f"the writer never completed a write: {seen}"


def test_kill_9_harness_catches_plain_writes(tmp_path: Path) -> None:
    """Control: the same harness does see torn files when the writer is not atomic."""
    seen = kill_writer_repeatedly(tmp_path, "plain", iterations=10)
    assert "torn" in seen, seen


# -- lock -------------------------------------------------------------------------------------

HOLDER = """
    import sys
    from cluster_mgmt.state import StateVolume
    cs = StateVolume(sys.argv[1]).cluster("prod", "eu-web")
    with cs.lock("provision", "run-1"):
        print("locked", flush=True)
        sys.stdin.readline()
"""


def test_lock_busy_from_another_process(cluster: ClusterState) -> None:
    holder = spawn_python(HOLDER, str(cluster.dir.parents[3]))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ClusterBusyError) as busy, cluster.lock("teardown", "run-2"):
            pytest.fail("lock acquired while another process holds it")
        assert str(busy.value) == "operation provision in progress (flow run run-1)"
        assert busy.value.pid == holder.pid and busy.value.operation == "provision"
        again = pickle.loads(pickle.dumps(busy.value))
        assert str(again) == str(busy.value) and again.flow_run_id == "run-1"
        assert mode(cluster.dir / ".lock") == 0o600
    finally:
        holder.communicate("\n", timeout=10)
    assert holder.returncode == 0
    with cluster.lock("teardown", "run-2"):
        record = json.loads((cluster.dir / ".lock").read_text())
        assert record["operation"] == "teardown" and record["pid"] == os.getpid()


def test_lock_is_freed_when_holder_is_killed(cluster: ClusterState) -> None:
    holder = spawn_python(HOLDER, str(cluster.dir.parents[3]))
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)
    with cluster.lock("provision", "run-3"):
        pass


def test_lock_excludes_a_second_holder_in_the_same_process(cluster: ClusterState) -> None:
    busy = pytest.raises(ClusterBusyError, match=r"^operation provision in progress")
    with cluster.lock("provision", "run-1"), busy, cluster.lock("provision", "run-2"):
        pytest.fail("lock acquired twice")


# -- staging and promotion --------------------------------------------------------------------


def test_staging_promotes_after_success(cluster: ClusterState) -> None:
    with cluster.staging("up") as stage:
        assert stage.parent == cluster.dir and stage.name.startswith(".staging-")
        assert mode(stage) == 0o700
        assert sorted(os.listdir(stage)) == ["cluster.yml"]
        (stage / "cluster.rkestate").write_text(rkestate(1))
        (stage / "kube_config_cluster.yml").write_text(kubeconfig())
    assert cluster.read_text("cluster.rkestate") == rkestate(1)
    assert cluster.read_text("kube_config_cluster.yml") == kubeconfig()
    assert mode(cluster.dir / "cluster.rkestate") == 0o600
    assert cluster.last_promotion == Promotion(
        promoted=["cluster.rkestate", "kube_config_cluster.yml"], rejected=[]
    )
    assert hidden_entries(cluster) == []
    assert cluster.read_status().rke_state_written
    before, after = history_names(cluster)
    assert before.endswith("-up") and after.endswith("-up-promoted")
    assert os.listdir(cluster.history_dir / before) == ["cluster.yml"]
    assert (cluster.history_dir / after / "cluster.rkestate").read_text() == rkestate(1)


def test_staging_promotes_after_an_exception(cluster: ClusterState) -> None:
    provision(cluster, version=1)
    failed = pytest.raises(RuntimeError, match="rke up exited 1")
    with failed, cluster.staging("up") as stage:
        assert (stage / "cluster.rkestate").read_text() == rkestate(1)
        (stage / "cluster.rkestate").write_text(rkestate(2))
        raise RuntimeError("rke up exited 1")
    assert cluster.read_text("cluster.rkestate") == rkestate(2)
    assert cluster.last_promotion.promoted == ["cluster.rkestate"]
    assert hidden_entries(cluster) == []


@pytest.mark.parametrize(
    ("filename", "broken"),
    [
        ("cluster.rkestate", rkestate(2, padding=5000)[:3000]),
        ("cluster.rkestate", ""),
        ("cluster.rkestate", json.dumps({"nodes": []})),
        ("kube_config_cluster.yml", kubeconfig()[:-300]),
        ("kube_config_cluster.yml", cut_inside_key(kubeconfig())),
        ("kube_config_cluster.yml", kubeconfig().split("users:")[0]),
        ("kube_config_cluster.yml", ""),
        ("kube_config_cluster.yml", cut_inside_key(kubeconfig(), keep=4)),
        ("kube_config_cluster.yml", without_key(kubeconfig())),
        ("cluster.rkestate", rkestate_with_cut_ca()),
        ("cluster.rkestate", rkestate_with_cut_second_ca_block()),
        ("kube_config_cluster.yml", kubeconfig_with_cut_second_certificate()),
        ("kube_config_cluster.yml", kubeconfig_with_cut_second_key()),
    ],
    ids=[
        "rkestate-truncated",
        "rkestate-empty",
        "rkestate-foreign",
        "kc-truncated",
        "kc-key-cut-on-base64-boundary",
        "kc-no-users",
        "kc-empty",
        "kc-key-is-LS0t",
        "kc-cert-without-key",
        "rkestate-ca-cut-inside-valid-json",
        "rkestate-ca-then-cut-second-block",
        "kc-cert-then-cut-second-block",
        "kc-key-then-cut-second-block",
    ],
)
def test_unparsable_file_is_rejected_and_kept(
    cluster: ClusterState, filename: str, broken: str
) -> None:
    provision(cluster, version=1)
    old = cluster.read_text(filename)
    with cluster.staging("up") as stage:
        (stage / filename).write_text(broken)
    assert cluster.read_text(filename) == old
    assert cluster.last_promotion == Promotion(promoted=[], rejected=[filename])
    (rejected,) = [n for n in history_names(cluster) if n.endswith("-up-rejected")]
    assert (cluster.history_dir / rejected / filename).read_text() == broken
    assert mode(cluster.history_dir / rejected / filename) == 0o600
    cluster.ensure_state_intact()


def test_files_rke_deleted_are_kept(cluster: ClusterState) -> None:
    provision(cluster)
    with cluster.staging("remove") as stage:
        (stage / "cluster.rkestate").unlink()
        (stage / "kube_config_cluster.yml").unlink()
    assert cluster.read_text("cluster.rkestate") == rkestate(1)
    assert cluster.read_text("kube_config_cluster.yml") == kubeconfig()
    assert cluster.last_promotion == Promotion(promoted=[], rejected=[])


KILLED_RUN = """
    import os, signal, sys
    from pathlib import Path
    from cluster_mgmt.state import StateVolume
    cs = StateVolume(sys.argv[1]).cluster("prod", "eu-web")
    with cs.lock("up", "run-9"):
        with cs.staging("up") as stage:
            (stage / "cluster.rkestate").write_text(Path(sys.argv[2]).read_text())
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_lock_recovers_a_run_killed_mid_staging(cluster: ClusterState, tmp_path: Path) -> None:
    provision(cluster, version=1)
    (tmp_path / "v2").write_text(rkestate(2))
    killed = run_python(KILLED_RUN, str(cluster.dir.parents[3]), str(tmp_path / "v2"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert cluster.read_text("cluster.rkestate") == rkestate(1)
    (leftover,) = [n for n in hidden_entries(cluster) if n.startswith(".staging-")]
    with cluster.lock("up", "run-10"):
        assert cluster.read_text("cluster.rkestate") == rkestate(2)
        assert hidden_entries(cluster) == []
    assert leftover.endswith("-up")


def test_recover_interrupted_promotes_leftovers_and_clears_debris(cluster: ClusterState) -> None:
    provision(cluster, version=1)
    stage = cluster.dir / ".staging-20260101T000000.000001Z-up"
    stage.mkdir()
    (stage / "cluster.rkestate").write_text(rkestate(3))
    (stage / "kube_config_cluster.yml").write_text(kubeconfig()[:100])
    (cluster.dir / ".cluster.rkestate.tmp-abc").write_text("half")
    (cluster.dir / ".build-xyz").mkdir()
    (cluster.history_dir / ".build-xyz").mkdir()
    assert cluster.recover_interrupted() == [
        Promotion(promoted=["cluster.rkestate"], rejected=["kube_config_cluster.yml"])
    ]
    assert cluster.read_text("cluster.rkestate") == rkestate(3)
    assert cluster.read_text("kube_config_cluster.yml") == kubeconfig()
    assert hidden_entries(cluster) == []
    assert not any(n.startswith(".") for n in history_names(cluster))
    assert cluster.recover_interrupted() == []


RKE_LOOP = """
    import sys
    from pathlib import Path
    from cluster_mgmt.state import StateVolume
    cs = StateVolume(sys.argv[1], history_limit=4).cluster("prod", "eu-web")
    contents = [Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()]
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        with cs.lock("up", f"run-{i}"), cs.staging("up") as stage:
            (stage / "cluster.rkestate").write_bytes(contents[i % 2])  # a plain write, as RKE does
"""


def test_kill_9_during_operations_never_loses_or_tears_state(
    cluster: ClusterState, tmp_path: Path
) -> None:
    rng = random.Random(99)
    a, b = rkestate(1, padding=1_500_000), rkestate(2, padding=1_000_000)
    (tmp_path / "a").write_text(a)
    (tmp_path / "b").write_text(b)
    cluster.write_text("cluster.rkestate", a)
    cluster.mark_rke_state_written()  # as after a first `rke up`: a kill before the loop's first
    # promotion (a loaded machine) must find it as well as one after
    root = str(cluster.dir.parents[3])
    volume = StateVolume(root, history_limit=4)
    cs = volume.cluster("prod", "eu-web")
    seen = set()
    for i in range(8):
        proc = spawn_python(RKE_LOOP, root, str(tmp_path / "a"), str(tmp_path / "b"))
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert cs.read_text("cluster.rkestate") in (a, b)
        assert cs.read_status().rke_state_written
        with cs.lock("check", f"check-{i}"):
            current = cs.read_text("cluster.rkestate")
            assert current in (a, b)
            seen.add(current)
            assert hidden_entries(cs) == []
        for entry in cs.history_dir.iterdir():
            assert not entry.name.startswith("."), entry
            copy = entry / "cluster.rkestate"
            if copy.exists() and not entry.name.endswith("-rejected"):
                assert copy.read_text() in (a, b), entry
        cs.ensure_state_intact()
    assert seen == {a, b}, "the loop never completed an operation: the test proved nothing"


def test_promote_refuses_foreign_directories(cluster: ClusterState, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a staging directory"):
        cluster.promote(tmp_path)


# -- never mint a new CA ----------------------------------------------------------------------


def test_a_present_rkestate_alone_counts_as_written(cluster: ClusterState) -> None:
    (cluster.dir / "cluster.rkestate").write_text("")
    assert cluster.rke_state_written()
    with pytest.raises(StateMissingError, match="is empty"):
        cluster.ensure_state_intact()


def test_first_provision_that_failed_before_rke_may_rerun(cluster: ClusterState) -> None:
    cluster.write_status("FAILED", "provision", "run-1", "preflight failed")
    cluster.snapshot_history("up")
    assert not cluster.rke_state_written()
    cluster.ensure_state_intact()


def test_ensure_state_intact_after_rkestate_deleted(cluster: ClusterState) -> None:
    provision(cluster)
    cluster.ensure_state_intact()
    copy = cluster.history_dir / history_names(cluster)[-1] / "cluster.rkestate"
    (cluster.dir / "cluster.rkestate").unlink()
    with pytest.raises(StateMissingError) as missing:
        cluster.ensure_state_intact()
    message = str(missing.value)
    assert f"{cluster.dir / 'cluster.rkestate'} is missing" in message
    assert f"source history (newest copy {copy.parent.name})" in message
    assert "kube-system/full-cluster-state" in message and "rke util get-state-file" in message
    assert f"cluster-mgmt recover {cluster.environment} {cluster.name} --source" in message
    assert "recover-cluster-state" in message and "in-cluster" in message and "rke-util" in message
    (cluster.dir / "kube_config_cluster.yml").unlink()
    for entry in cluster.history_dir.iterdir():
        (entry / "cluster.rkestate").unlink(missing_ok=True)
    with pytest.raises(StateMissingError, match="no history copy exists"):
        cluster.ensure_state_intact()  # status.json still says RKE wrote state
    (cluster.dir / "cluster.rkestate").write_text("{not json")
    with pytest.raises(StateMissingError, match="is not complete RKE state"):
        cluster.ensure_state_intact()


def test_first_state_torn_before_any_complete_write_may_start_afresh(cluster: ClusterState) -> None:
    # RKE writes its first state before deploying anything: torn, nothing reached a node.
    with cluster.staging("up") as stage:
        (stage / "cluster.rkestate").write_text(rkestate(1)[:50])
    assert not (cluster.dir / "cluster.rkestate").exists()
    assert not cluster.rke_state_written()
    cluster.ensure_state_intact()


def test_checkpoint_keeps_the_first_write_when_the_second_is_torn(cluster: ClusterState) -> None:
    with cluster.staging("up") as stage:
        (stage / "cluster.rkestate").write_text(rkestate(1))
        assert cluster.promote(stage, checkpoint=True).promoted == ["cluster.rkestate"]
        (stage / "cluster.rkestate").write_text(rkestate(2)[:50])  # killed mid-rewrite
        assert cluster.promote(stage, checkpoint=True).rejected == []
    assert cluster.read_text("cluster.rkestate") == rkestate(1)
    assert cluster.last_promotion.rejected == ["cluster.rkestate"]
    assert cluster.rke_state_written()
    cluster.ensure_state_intact()


# -- history ----------------------------------------------------------------------------------


class FrozenClock(datetime):
    """datetime whose now() never moves: every stamp collides unless bumped."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:
        return datetime(2026, 11, 25, 11, 2, 3, 123456, tzinfo=UTC)


def test_history_is_pruned_to_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "datetime", FrozenClock)
    vol = StateVolume(tmp_path / "root", history_limit=3)
    vol.initialise()
    cs = vol.cluster("prod", "eu-web")
    cs.create()
    made = []
    for i in range(6):
        cs.write_text("cluster.yml", f"{CLUSTER_YML}# {i}\n")
        made.append(cs.snapshot_history("up"))
    assert [p.name for p in made[:2]] == [
        "20261125T110203.123456Z-up",
        "20261125T110203.123457Z-up",
    ]
    assert len({p.name[:23] for p in made}) == 6
    assert [p.name for p in made] == sorted(p.name for p in made)
    assert history_names(cs) == sorted(p.name for p in made[-3:])
    assert (made[-1] / "cluster.yml").read_text().endswith("# 5\n")


def test_pruning_keeps_the_newest_valid_rke_state(tmp_path: Path) -> None:
    vol = StateVolume(tmp_path / "root", history_limit=2)
    vol.initialise()
    cs = vol.cluster("prod", "eu-web")
    cs.create()
    cs.write_text("cluster.yml", CLUSTER_YML)
    provision(cs)
    (cs.dir / "cluster.rkestate").unlink()
    for i in range(4):
        cs.write_text("cluster.yml", f"{CLUSTER_YML}# {i}\n")
        cs.snapshot_history("up")
    names = history_names(cs)
    assert len(names) == 3 and names[0].endswith("-up-promoted")
    with pytest.raises(StateMissingError, match=names[0]):
        cs.ensure_state_intact()


# -- archive ----------------------------------------------------------------------------------


def test_archive_moves_the_whole_directory(volume: StateVolume, cluster: ClusterState) -> None:
    provision(cluster)
    target = cluster.archive()
    assert target.parent == volume.archive_root / "prod"
    assert target.name.startswith("eu-web-20") and target.name.endswith("Z")
    assert (target / "cluster.rkestate").read_text() == rkestate(1)
    assert (target / "history").is_dir()
    assert not cluster.dir.exists() and not cluster.exists()
    assert mode(volume.archive_root) == mode(target.parent) == 0o700
    assert volume.clusters() == []
    with pytest.raises(StateError, match="no cluster prod/eu-web on the state volume"):
        cluster.archive()


# -- the volume root --------------------------------------------------------------------------

CHECK = """
    import sys
    from cluster_mgmt.state import StateError, StateVolume
    for root in sys.argv[1:]:
        try:
            StateVolume(root).check_usable()
            print("usable")
        except StateError as exc:
            print(exc)
"""


def check_read_only(mount: Path, roots: list[Path]) -> list[str] | None:
    """check_usable() on ``roots`` inside ``mount`` made read-only; None if that is impossible."""
    ro_mount = ["mount", "--bind", "-o", "ro", str(mount), str(mount)]
    unshare = ["unshare", "-m", "--", *ro_mount]
    probe = subprocess.run(unshare, check=False, capture_output=True, timeout=10)
    if probe.returncode == 0:
        argv = ["unshare", "-m", "sh", "-c", f'{" ".join(ro_mount)} && exec "$@"', "sh"]
    else:
        os.chmod(mount, 0o755)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    argv += [sys.executable, "-c", textwrap.dedent(CHECK), *map(str, roots)]
    result = subprocess.run(
        argv, check=False, cwd=ROOT_DIR, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        return None
    return result.stdout.splitlines()


def test_unwritable_root_is_reported(tmp_path: Path) -> None:
    mount = tmp_path / "mnt"
    StateVolume(mount / "existing").initialise()
    roots = [mount / "existing", mount / "missing" / "root"]
    lines = check_read_only(mount, roots)
    if lines is None:
        pytest.skip("neither `unshare -m` + read-only bind mount nor `setpriv` works here")
    writable, missing = lines
    assert writable.startswith(f"state volume root {roots[0]} is not writable: "), writable
    assert writable.endswith("; mount the volume read-write or fix cluster-state-volume.root")
    assert missing.startswith(f"state volume root {roots[1]} does not exist: "), missing
    assert os.listdir(mount / "existing") == ["cluster-mgmt-volume.json"]
    assert not (mount / "missing").exists()


def test_operations_never_create_the_root(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="does not exist: the volume is not mounted"):
        StateVolume(tmp_path / "a" / "root").check_usable()
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(VolumeError, match="is not a directory"):
        StateVolume(tmp_path / "file").check_usable()


def test_an_empty_unmounted_root_is_not_a_volume(tmp_path: Path) -> None:
    """A mount point whose volume is not attached is an empty folder: never a new volume."""
    (tmp_path / "mnt").mkdir()
    with pytest.raises(VolumeError, match="has no volume marker: it is not an initialised"):
        StateVolume(tmp_path / "mnt").check_usable()
    assert os.listdir(tmp_path / "mnt") == []


def test_initialise_writes_the_marker_once(tmp_path: Path) -> None:
    vol = StateVolume(tmp_path / "a" / "root", ebs_volume_id="vol-0abc")
    marker = vol.initialise()
    assert marker.ebs_volume_id == "vol-0abc" and len(marker.volume_id) == 36
    assert vol.initialise() == marker == vol.check_usable()
    assert mode(vol.root) == 0o700 and mode(vol.root / "cluster-mgmt-volume.json") == 0o600
    assert os.listdir(vol.root) == ["cluster-mgmt-volume.json"]


def test_a_marker_that_differs_from_the_block_is_refused(tmp_path: Path) -> None:
    marker = StateVolume(tmp_path / "root", ebs_volume_id="vol-0abc").initialise()
    with pytest.raises(VolumeError, match="initialised for EBS volume vol-0abc, but .* vol-0def"):
        StateVolume(tmp_path / "root", ebs_volume_id="vol-0def").check_usable()
    with pytest.raises(VolumeError, match=f"is volume {marker.volume_id}, but .* expects other"):
        StateVolume(tmp_path / "root", volume_id="other").check_usable()
    with pytest.raises(VolumeError, match="initialised for EBS volume"):
        StateVolume(tmp_path / "root", ebs_volume_id="vol-0def").initialise()
    StateVolume(tmp_path / "root", volume_id=marker.volume_id).check_usable()
    (tmp_path / "root" / "cluster-mgmt-volume.json").write_text("{")
    with pytest.raises(VolumeError, match="is not a volume marker"):
        StateVolume(tmp_path / "root").check_usable()


# -- history never loses the cluster's state ----------------------------------------------------


def test_first_rke_up_leaves_a_complete_recovery_copy_in_history(cluster: ClusterState) -> None:
    """RKE reports each write, so the files are promoted by checkpoints during the run; the
    final promotion then finds nothing new, yet history must hold a copy of both."""
    with cluster.staging("up") as stage:
        (stage / "cluster.rkestate").write_text(rkestate(1))
        cluster.promote(stage, checkpoint=True)
        (stage / "kube_config_cluster.yml").write_text(kubeconfig())
        cluster.promote(stage, checkpoint=True)
    newest = cluster.history_dir / history_names(cluster)[-1]
    assert newest.name.endswith("-up-promoted")
    assert (newest / "cluster.rkestate").read_text() == rkestate(1)
    assert (newest / "kube_config_cluster.yml").read_text() == kubeconfig()


def test_policy_decisions_and_no_ops_never_evict_state_snapshots(tmp_path: Path) -> None:
    vol = StateVolume(tmp_path / "root", history_limit=3)
    vol.initialise()
    cs = vol.cluster("prod", "eu-web")
    cs.create()
    cs.write_text("cluster.yml", CLUSTER_YML)
    for version in (1, 2, 3):
        provision(cs, version)
    snapshots = [n for n in history_names(cs) if not n.endswith("-policy")]
    for _ in range(20):
        cs.record_decision("provision", {"allowed": True, "violations": []})
        assert cs.snapshot_history("provision") is None  # nothing changed: no new copy
    names = history_names(cs)
    assert [n for n in names if not n.endswith("-policy")] == snapshots
    assert len([n for n in names if n.endswith("-policy")]) == 3


def test_a_decision_never_creates_a_cluster_directory(volume: StateVolume) -> None:
    gone = volume.cluster("prod", "gone")
    with pytest.raises(ClusterNotFoundError):
        gone.record_decision("teardown", {"allowed": False})
    assert not gone.dir.exists()


def test_a_decision_racing_a_teardown_leaves_no_phantom_directory(
    volume: StateVolume, cluster: ClusterState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A denial is recorded without the lock: a teardown that archives the cluster between
    finding its history directory and writing the entry must not get the directory back."""
    provision(cluster)
    found_history = ClusterState._subdir

    def archived_right_after(self: ClusterState, name: str) -> Path:
        path = found_history(self, name)
        self.archive()
        return path

    monkeypatch.setattr(ClusterState, "_subdir", archived_right_after)
    with pytest.raises(ClusterNotFoundError):
        cluster.record_decision("teardown", {"allowed": False})
    assert not cluster.dir.exists()
    (archived,) = volume.archived("prod", "eu-web")
    assert not [n for n in os.listdir(archived / "history") if n.endswith("-policy")]


# -- the lock protects the directory it was taken for -------------------------------------------


def test_lock_never_creates_a_directory_unless_asked(volume: StateVolume) -> None:
    gone = volume.cluster("prod", "gone")
    with pytest.raises(ClusterNotFoundError, match="no cluster prod/gone"), gone.lock("x", "r"):
        pass
    assert not gone.dir.exists()
    with gone.lock("provision", "r1", create=True):
        assert gone.dir.is_dir()


def test_lock_is_retaken_when_the_directory_is_replaced_meanwhile(
    volume: StateVolume, cluster: ClusterState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run archives the directory and a provision re-creates it between our open()
    and our flock(): the lock must end up on the new directory's lock file."""
    real_flock = fcntl.flock
    calls = []

    def flock_after_a_replacement(fd: int, op: int) -> None:
        if not calls and op & fcntl.LOCK_EX:
            cluster.archive()
            cluster.create()
        calls.append(op)
        real_flock(fd, op)

    monkeypatch.setattr(state.fcntl, "flock", flock_after_a_replacement)
    with cluster.lock("provision", "r1", create=True):
        monkeypatch.setattr(state.fcntl, "flock", real_flock)
        other = spawn_python(LOCK_PROBE, str(cluster.dir / ".lock"))
        assert other.communicate(timeout=30)[0].strip() == "busy"
    assert len(volume.archived("prod", "eu-web")) == 1


def test_lock_of_an_archived_directory_is_not_found(
    cluster: ClusterState, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_flock = fcntl.flock

    def flock_after_archive(fd: int, op: int) -> None:
        if op & fcntl.LOCK_EX and cluster.dir.exists():
            cluster.archive()
        real_flock(fd, op)

    monkeypatch.setattr(state.fcntl, "flock", flock_after_archive)
    with pytest.raises(ClusterNotFoundError), cluster.lock("teardown", "r2"):
        pass
    assert not cluster.dir.exists()


LOCK_PROBE = """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("free")
    except BlockingIOError:
        print("busy")
"""


def test_atomic_write_makes_the_rename_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The file is fsynced before the rename and its directory after it: without the
    directory fsync a power cut can forget the rename (the old file, or none, comes back)."""
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "dir" / "file"
    target.parent.mkdir()
    atomic_write(target, b"new")
    file_syncs = [i for i, (path, is_dir) in enumerate(synced) if not is_dir]
    dir_syncs = [
        i for i, (path, is_dir) in enumerate(synced) if is_dir and path == str(target.parent)
    ]
    assert file_syncs and dir_syncs and dir_syncs[-1] > file_syncs[-1], synced
