"""Health evaluation against real lab API servers (lab.fleet): every verdict and its reasons,
damping, credentials and certificates, servers that hang, lie or flood, and bad state files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cluster_mgmt.health import (
    HealthRecord,
    HealthSettings,
    Observation,
    Verdict,
    certificate_findings,
    damp,
    probe_cluster,
    read_health,
    record_observation,
    run_sweep,
)
from lab.fleet import FAULTS, Fleet, kubeconfig, make_pki
from lab.rke import pki

BASE = "127.2.0.1"  # this module's API servers: 127.2.0.1-18 and 127.2.1.x (garbage servers)
FAST = HealthSettings(probe_timeout=2.5, connect_timeout=2.5, sweeps_to_change=2)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """18 clusters: one of each fault kind, the rest healthy."""
    with Fleet(tmp_path_factory.mktemp("fleet"), 18, 0.5, BASE, environment="health") as f:
        yield f


@pytest.fixture(autouse=True)
def fresh_health(request):
    """Each test starts without health.json (the fleet is shared by the module)."""
    if "fleet" in request.fixturenames:
        fleet = request.getfixturevalue("fleet")
        for cluster in fleet.volume.clusters():
            cluster.path("health.json").unlink(missing_ok=True)


def by_fault(fleet: Fleet, fault: str | None):
    name = next(n for n, e in fleet.expected.items() if e["fault"] == fault)
    return fleet.volume.cluster(fleet.environment, name)


def probe(cluster, settings: HealthSettings = FAST) -> Observation:
    return asyncio.run(probe_cluster(cluster, settings))


def test_every_fault_kind_gets_its_verdict_and_reason(fleet):
    outcomes = run_sweep(fleet.volume.clusters(), FAST)
    got = {o.observation.name: o for o in outcomes}
    assert len(got) == 18
    reasons = {}
    for name, entry in fleet.expected.items():
        outcome = got[name]
        assert outcome.record.verdict == entry["verdict"], (entry, outcome.observation.reasons)
        reasons[entry["fault"]] = " ".join(outcome.record.reasons)
    assert set(reasons) == {*FAULTS, None}
    assert reasons[None] == ""
    assert "connection refused" in reasons["api-down"]
    assert "no answer within 2.5s" in reasons["api-hang"]
    assert "TLS" in reasons["wrong-ca"] and "CA" in reasons["wrong-ca"]
    assert "401 Unauthorized" in reasons["unauthorized"]
    assert "etcd" in reasons["etcd-unhealthy"]
    assert "NotReady" in reasons["node-notready"]
    assert "crash-looping" in reasons["pod-crashloop"]
    assert "kube-node expires on" in reasons["cert-expiring"]
    assert "kube-node expired on" in reasons["cert-expired"]
    healthy = got[by_fault(fleet, None).name].observation
    assert healthy.kubernetes_version == "v1.30.5"
    assert (healthy.nodes_ready, healthy.nodes_total) == (1, 1)


def test_damping_changes_a_verdict_after_two_agreeing_sweeps(fleet):
    cluster = by_fault(fleet, None)
    address = fleet.expected[cluster.name]["address"]
    assert run_sweep([cluster], FAST)[0].transition.verdict == "Healthy"  # first verdict at once
    fleet.supervisor.call("api", address=address, mode="down")
    try:
        first = run_sweep([cluster], FAST)[0]
        assert first.transition is None and first.record.verdict == "Healthy"
        assert first.record.candidate["verdict"] == "Unreachable"
        assert first.record.candidate["seen"] == 1
        second = run_sweep([cluster], FAST)[0]
        assert second.transition.verdict == "Unreachable"
        assert second.transition.previous == "Healthy"
        record = read_health(cluster)
        assert record.verdict == "Unreachable" and record.candidate is None
        assert record.previous["verdict"] == "Healthy"
        assert record.since == first.record.candidate["first_seen"]
        assert "connection refused" in record.reasons[0]
    finally:
        fleet.supervisor.call("api", address=address, mode="up")
    # one healthy sweep in between resets the candidate: a flap never changes the verdict
    fleet.supervisor.call("etcd", address=address, healthy=False)
    assert run_sweep([cluster], FAST)[0].record.candidate["verdict"] == "Degraded"
    fleet.supervisor.call("etcd", address=address, healthy=True)
    back = run_sweep([cluster], FAST)[0]
    assert back.record.verdict == "Unreachable"
    assert back.record.candidate == {**back.record.candidate, "verdict": "Healthy", "seen": 1}
    assert run_sweep([cluster], FAST)[0].transition.verdict == "Healthy"


def obs(verdict: Verdict, at: str, reasons=()) -> Observation:
    return Observation("e", "n", "READY", verdict, list(reasons), checked_at=at)


def test_damp_with_other_thresholds():
    record, changed = damp(None, obs(Verdict.HEALTHY, "t0"), 3)
    assert changed and record.since == "t0"
    for at in ("t1", "t2"):
        record, changed = damp(record, obs(Verdict.DEGRADED, at, ["x"]), 3)
        assert not changed and record.verdict == "Healthy"
    record, changed = damp(record, obs(Verdict.DEGRADED, "t3", ["y"]), 3)
    assert changed and record.verdict == "Degraded" and record.since == "t1"
    assert record.reasons == ["y"] and record.previous["until"] == "t1"
    record, changed = damp(record, obs(Verdict.HEALTHY, "t4"), 1)
    assert changed and record.verdict == "Healthy"
    # a different new verdict restarts the count
    record, _ = damp(record, obs(Verdict.DEGRADED, "t5"), 2)
    record, changed = damp(record, obs(Verdict.UNREACHABLE, "t6"), 2)
    assert not changed and record.candidate["verdict"] == "Unreachable"
    assert record.candidate["seen"] == 1
    with pytest.raises(ValueError, match="not judged"):
        damp(record, Observation("e", "n", "UPDATING"), 2)


def test_server_that_accepts_and_never_answers_is_bounded_in_time(fleet):
    cluster = by_fault(fleet, "api-hang")
    started = time.monotonic()
    observation = probe(cluster, HealthSettings(probe_timeout=0.5, connect_timeout=0.5))
    assert observation.verdict == "Unreachable"
    assert observation.reasons == ["GET /readyz?verbose: no answer within 0.5s"]
    assert time.monotonic() - started < 10  # the mechanism: the request's own time limit


def test_slow_answers_past_the_probe_timeout_are_unreachable(fleet):
    cluster = by_fault(fleet, None)
    address = fleet.expected[cluster.name]["address"]
    fleet.supervisor.call("api", address=address, mode="slow", delay=4)
    try:
        observation = probe(cluster)
    finally:
        fleet.supervisor.call("api", address=address, mode="up")
    assert observation.verdict == "Unreachable"
    assert "no answer within 2.5s" in observation.reasons[0]


def test_certificates_expired_and_expiring_are_read_from_the_rkestate_only(fleet, tmp_path):
    cluster = by_fault(fleet, "cert-expiring")
    data = cluster.path("cluster.rkestate").read_bytes()
    now = datetime.now(UTC)
    first, reasons = certificate_findings(data, now, 30)
    assert reasons == [
        f"certificate kube-node expires on {first:%Y-%m-%d} (in {(first - now).days} days)"
    ]
    assert certificate_findings(data, now, 5)[1] == []  # configurable horizon
    later = now + timedelta(days=20)
    assert "expired on" in certificate_findings(data, later, 30)[1][0]
    expired = certificate_findings(
        by_fault(fleet, "cert-expired").path("cluster.rkestate").read_bytes(), now, 30
    )
    assert expired[0] < now and "checked" in expired[1][0]
    for bad in (b"not json", b"{}", json.dumps({"currentState": {}}).encode()):
        with pytest.raises(ValueError):
            certificate_findings(bad, now, 30)


def test_a_cluster_in_an_operation_is_reported_with_its_phase_and_not_judged(fleet):
    cluster = by_fault(fleet, "api-down")
    before = cluster.read_status()
    cluster.write_status("UPDATING", "update", "run-1", "adding a node")
    try:
        outcome = run_sweep([cluster], FAST)[0]
    finally:
        cluster.write_status(before.phase, before.operation, before.flow_run_id, before.message)
    assert outcome.observation.phase == "UPDATING" and outcome.observation.verdict is None
    assert outcome.record is None and outcome.transition is None and not outcome.gone
    assert outcome.row()["verdict"] == "not judged"
    assert not cluster.path("health.json").exists()


def test_a_cluster_torn_down_mid_sweep_gets_nothing_written(fleet):
    cluster = by_fault(fleet, "pod-crashloop")
    observation = probe(cluster)
    assert observation.verdict == "Degraded"
    archived = cluster.archive()
    try:
        assert record_observation(cluster, observation, 2) == (None, None)
        assert not cluster.dir.exists()
        assert not (archived / "health.json").exists()
        assert [p.name for p in archived.iterdir() if "health" in p.name] == []
    finally:
        os.rename(archived, cluster.dir)


def test_a_sweep_goes_on_when_a_cluster_vanishes(fleet):
    clusters = fleet.volume.clusters()
    victim = by_fault(fleet, "node-notready")
    archived = victim.archive()
    try:
        outcomes = run_sweep(clusters, FAST)
    finally:
        os.rename(archived, victim.dir)
    gone = next(o for o in outcomes if o.observation.name == victim.name)
    assert gone.observation.verdict is None and gone.record is None
    assert sum(o.record is not None for o in outcomes) == 17


def copy_cluster(fleet, source, name: str):
    """A new READY cluster on the volume with `source`'s files."""
    cluster = fleet.volume.cluster(fleet.environment, name)
    cluster.create()
    for filename in ("cluster.yml", "cluster.rkestate", "kube_config_cluster.yml", "status.json"):
        cluster.path(filename).write_bytes(source.path(filename).read_bytes())
    return cluster


@pytest.mark.parametrize(
    ("filename", "content", "verdict", "reason"),
    [
        ("kube_config_cluster.yml", None, "Unreachable", "kube_config_cluster.yml is missing"),
        ("kube_config_cluster.yml", b"\x00\x01 binary", "Unreachable", "not a YAML mapping"),
        ("kube_config_cluster.yml", b"clusters: []\n", "Unreachable", "has no context None"),
        ("cluster.rkestate", None, "Degraded", "cluster.rkestate is missing"),
        ("cluster.rkestate", b'{"desiredState": ', "Degraded", "rkestate unreadable"),
        ("status.json", b"garbage", None, "status.json unreadable"),
        ("status.json", None, None, "no status.json yet"),
    ],
)
def test_bad_state_files_give_a_clear_reason(fleet, filename, content, verdict, reason):
    cluster = copy_cluster(fleet, by_fault(fleet, None), f"bad-{abs(hash((filename, content)))}")
    try:
        if content is None:
            cluster.path(filename).unlink()
        else:
            cluster.path(filename).write_bytes(content)
        observation = probe(cluster)
    finally:
        shutil.rmtree(cluster.dir)
    assert observation.verdict == verdict
    assert any(reason in r for r in observation.reasons), observation.reasons


def test_unreadable_kubeconfig_and_foreign_key(fleet):
    source = by_fault(fleet, None)
    cluster = copy_cluster(fleet, source, "bad-perm-x")
    try:
        path = cluster.path("kube_config_cluster.yml")
        text = path.read_text()
        lines = text.splitlines()
        # a client key that does not belong to the certificate
        other = by_fault(fleet, "unauthorized").read_text("kube_config_cluster.yml")
        key = next(line for line in other.splitlines() if "client-key-data" in line)
        path.write_text("\n".join(key if "client-key-data" in ln else ln for ln in lines))
        observation = probe(cluster)
        assert observation.verdict == "Unreachable"
        assert "client certificate/key" in observation.reasons[0]
        path.write_text(text.replace("client-key-data: ", "client-key-data: x-"))
        assert "not base64" in probe(cluster).reasons[0]
        if os.geteuid() != 0:  # root reads anything
            path.chmod(0)
            assert "Permission denied" in probe(cluster).reasons[0]
    finally:
        shutil.rmtree(cluster.dir)


class RawServer:
    """A TLS server with the cluster's own certificate that answers each request with `reply`."""

    def __init__(self, host: str, cert_pem: str, key_pem: str, reply, tmp: Path) -> None:
        (tmp / "srv.pem").write_text(cert_pem + key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp / "srv.pem")
        self.sock = socket.create_server((host, 6443))
        self.reply = reply
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn) -> None:
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                tls.recv(65536)
                self.reply(tls)
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


def huge(tls) -> None:
    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    chunk = b" " * 65536
    try:
        for _ in range(100_000):  # 6.5 GB if nobody stops reading
            tls.sendall(chunk)
    except OSError:
        pass


def huge_announced(tls) -> None:
    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\n\r\n")


def garbage(tls) -> None:
    tls.sendall(b"\x00\xffSSH-2.0-OpenSSH nonsense\r\n\r\n" * 10)


def not_json(tls) -> None:
    body = b"<html>hello</html>"
    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (huge, "answered more than 65536 bytes"),
        (huge_announced, "announced 5000000000 bytes"),
        (garbage, "garbage answer"),
        (not_json, "GET /version: garbage answer (not a JSON object)"),
    ],
)
def test_servers_answering_garbage_or_gigabytes(fleet, tmp_path, reply, reason):
    host = f"127.2.1.{[huge, huge_announced, garbage, not_json].index(reply) + 1}"
    own = make_pki(host, pki.new_keys(1) * 4, None)
    cluster = copy_cluster(fleet, by_fault(fleet, None), f"raw-{reply.__name__.replace('_', '-')}")
    config = kubeconfig(host, cluster.name, own.ca_pem, own.admin_cert_pem, own.admin_key_pem)
    cluster.path("kube_config_cluster.yml").write_text(config)
    server = RawServer(host, own.api_cert_pem, own.api_key_pem, reply, tmp_path)
    try:
        started = time.monotonic()
        observation = probe(cluster)
        elapsed = time.monotonic() - started
    finally:
        server.close()
        shutil.rmtree(cluster.dir)
    assert observation.verdict == "Unreachable", observation.reasons
    assert any(reason in r for r in observation.reasons), observation.reasons
    assert elapsed < 30


def test_client_credentials_never_touch_the_disk(fleet, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    before = set(os.listdir(by_fault(fleet, None).dir))
    assert probe(by_fault(fleet, None)).verdict == "Healthy"
    assert list(tmp_path.iterdir()) == []
    assert set(os.listdir(by_fault(fleet, None).dir)) == before


def test_one_connection_per_cluster(fleet):
    """All four probes of one cluster travel over a single TLS connection."""
    cluster = by_fault(fleet, None)
    server = fleet.supervisor.server(fleet.expected[cluster.name]["address"])
    accepted = []
    original = server._httpd.finish_request

    def counting(request, client_address):
        accepted.append(client_address)
        return original(request, client_address)

    server._httpd.finish_request = counting
    try:
        assert probe(cluster).verdict == "Healthy"
    finally:
        server._httpd.finish_request = original
    assert len(accepted) == 1


CHILD = """
import sys
from cluster_mgmt.state import StateVolume
from cluster_mgmt.health import Observation, Verdict, record_observation
cluster = StateVolume(sys.argv[1]).cluster(sys.argv[2], sys.argv[3])
i = 0
while True:
    i += 1
    if i == 2:
        print("go", flush=True)
    verdict = [Verdict.HEALTHY, Verdict.DEGRADED][i % 2]
    reasons = ["reason %d %s" % (i, "x" * (i % 5000))]
    record_observation(cluster, Observation(cluster.environment, cluster.name, "READY", verdict,
                       reasons, checked_at=str(i)), 1)
"""


def test_health_json_stays_whole_under_kill_9(fleet):
    cluster = by_fault(fleet, None)
    for attempt in range(8):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(fleet.volume.root),
                cluster.environment,
                cluster.name,
            ],
            stdout=subprocess.PIPE,
        )
        assert child.stdout.readline().strip() == b"go"
        time.sleep(0.05 + attempt * 0.03)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        data = cluster.path("health.json").read_bytes()
        record = HealthRecord.from_json(data)
        assert record is not None, data[:200]
        assert record.reasons[0].startswith(f"reason {record.checked_at} ")
