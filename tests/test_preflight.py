"""SSH preflight against real sshd lab nodes, plus the Docker version table."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from prefect import flow
from pydantic import SecretStr

import tasks.preflight as preflight_task
from blocks.ssh import NodeSshAccess
from cluster_mgmt.docker_versions import allowed_docker_versions, docker_version_allowed
from cluster_mgmt.preflight import (
    HostKeyPolicy,
    NodeTarget,
    PreflightError,
    PreflightReport,
    load_private_key,
    preflight,
)
from lab.nodes import DEFAULT_DOCKER_VERSION, LabNodes
from tasks.preflight import check_nodes

K8S = "v1.30.5-rancher1-1"
FIRST_ADDRESS = 40  # nodes on 127.0.0.40-42; fake servers below on 127.0.0.43-47
RKE_163_DOCKER_FOR_1_27_TO_1_30 = (
    "1.13.x",
    "17.03.x",
    "17.06.x",
    "17.09.x",
    "18.06.x",
    "18.09.x",
    "19.03.x",
    "20.10.x",
    "23.0.x",
    "24.0.x",
    "25.0.x",
    "26.0.x",
    "26.1.x",
    "27.0.x",
    "27.1.x",
    "27.2.x",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabNodes]:
    with LabNodes(
        tmp_path_factory.mktemp("preflight-lab"), 3, first_address=FIRST_ADDRESS
    ) as nodes:
        yield nodes


def targets_of(lab: LabNodes) -> list[NodeTarget]:
    return [NodeTarget(n.address, n.port, lab.user) for n in lab.nodes]


def run(
    lab: LabNodes, targets: list[NodeTarget] | None = None, **overrides: Any
) -> PreflightReport:
    args: dict[str, Any] = {
        "private_key": lab.client_private_key,
        "known_hosts": lab.known_hosts(),
        "recorded_known_hosts": "",
        "policy": HostKeyPolicy.REJECT,
        "kubernetes_version": K8S,
        "ignore_docker_version": False,
        "connect_timeout": 5.0,
        "command_timeout": 10.0,
    }
    args.update(overrides)
    return preflight(targets_of(lab) if targets is None else targets, **args)


def keygen_fingerprint(public_key_file: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(public_key_file)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


def keygen(path: Path, *args: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(path), *args], check=True)
    return path


def fresh_ed25519_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def key_body_lines(private_key: str) -> list[str]:
    return [line for line in private_key.strip().splitlines()[1:-1] if line.strip()]


# --- real nodes ---------------------------------------------------------------------------------


def test_all_nodes_ok_with_known_hosts(lab: LabNodes) -> None:
    report = run(lab)
    assert report.ok, report.rows()
    assert report.failures == ()
    assert report.accepted_host_keys == ()
    for node, result in zip(lab.nodes, report.nodes, strict=True):
        assert (result.address, result.port) == (node.address, node.port)
        assert result.reachable and result.authenticated
        assert result.docker_version == DEFAULT_DOCKER_VERSION
        assert result.host_key_fingerprint == keygen_fingerprint(node.host_key.with_suffix(".pub"))
    rows = report.rows()
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert rows[0]["node"] == f"{lab.nodes[0].address}:{lab.nodes[0].port}"
    assert rows[0]["host_key"].startswith("SHA256:")


def test_hashed_entries_split_between_block_and_recorded(lab: LabNodes, tmp_path: Path) -> None:
    hashed = tmp_path / "known_hosts"
    hashed.write_text(lab.known_hosts())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    lines = [line for line in hashed.read_text().splitlines() if line.startswith("|1|")]
    assert len(lines) == 3
    block = "# operator's list\n\n" + lines[0] + "\nnot a known_hosts line\n"
    recorded = "\n".join(lines[1:]) + "\n"
    report = run(lab, known_hosts=block, recorded_known_hosts=recorded)
    assert report.ok, report.rows()


def test_reject_unknown_host_without_logging_in(lab: LabNodes) -> None:
    first, *others = lab.nodes
    logins = [n.accepted_logins() for n in others]
    report = run(lab, known_hosts=first.known_hosts_line + "\n")
    assert report.nodes[0].ok
    assert [n.address for n in report.failures] == [n.address for n in others]
    for node, result in zip(others, report.nodes[1:], strict=True):
        assert result.reachable and not result.authenticated
        assert result.host_key_fingerprint == keygen_fingerprint(node.host_key.with_suffix(".pub"))
        assert result.error == (
            f"host key of [{node.address}]:{node.port} ({result.host_key_fingerprint}) is not "
            "known; add it to the node-ssh-access block's known_hosts "
            f"(ssh-keyscan -p {node.port} {node.address}) or set host_key_policy to accept-new"
        )
    assert [n.accepted_logins() for n in others] == logins  # no login to an unverified host


def test_accept_new_records_keys_then_a_changed_key_fails_loudly(lab: LabNodes) -> None:
    first = run(lab, known_hosts="", policy=HostKeyPolicy.ACCEPT_NEW)
    assert first.ok, first.rows()
    assert sorted(first.accepted_host_keys) == sorted(n.known_hosts_line for n in lab.nodes)
    recorded = "".join(line + "\n" for line in first.accepted_host_keys)

    again = run(lab, known_hosts="", recorded_known_hosts=recorded, policy="accept-new")
    assert again.ok and again.accepted_host_keys == ()

    node = lab.nodes[2]
    old = keygen_fingerprint(node.host_key.with_suffix(".pub"))
    node.rotate_host_key()
    new = keygen_fingerprint(node.host_key.with_suffix(".pub"))
    assert old != new
    logins = node.accepted_logins()
    for policy in HostKeyPolicy:
        report = run(lab, known_hosts="", recorded_known_hosts=recorded, policy=policy)
        assert [r.address for r in report.failures] == [node.address]
        failed = report.failures[0]
        assert failed.error == (
            f"HOST KEY CHANGED for [{node.address}]:{node.port}: expected {old}, got {new} — "
            "possible impersonation; verify the node and update known_hosts"
        )
        assert failed.host_key_fingerprint == new and not failed.authenticated
        assert report.accepted_host_keys == ()
    assert node.accepted_logins() == logins


def test_wrong_private_key(lab: LabNodes, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other", "-t", "ecdsa").read_text()
    report = run(lab, private_key=other)
    assert len(report.failures) == 3
    for node, result in zip(lab.nodes, report.nodes, strict=True):
        assert result.reachable and not result.authenticated
        assert result.error == (
            f"authentication failed for {lab.user}@{node.address}:{node.port}; check the "
            "node-ssh-access private key and the user's authorized_keys"
        )


def test_rsa_and_ecdsa_pem_keys_log_in(lab: LabNodes, tmp_path: Path) -> None:
    keys = [
        keygen(tmp_path / "rsa", "-t", "rsa", "-b", "2048", "-m", "PEM"),
        keygen(tmp_path / "ecdsa", "-t", "ecdsa", "-b", "384", "-m", "PEM"),
    ]
    authorized = lab.nodes[0].authorized_keys
    before = authorized.read_text()
    try:
        authorized.write_text(before + "".join(k.with_suffix(".pub").read_text() for k in keys))
        for key in keys:
            assert "BEGIN OPENSSH" not in key.read_text()
            report = run(lab, private_key=key.read_text())
            assert report.ok, report.rows()
    finally:
        authorized.write_text(before)


def test_stopped_node_is_refused_not_waited_for(lab: LabNodes) -> None:
    node = lab.nodes[1]
    node.stop()
    try:
        report = run(lab, connect_timeout=3.0)
    finally:
        node.start()
    assert [r.address for r in report.failures] == [node.address]
    failed = report.failures[0]
    assert not failed.reachable and not failed.authenticated and failed.host_key_fingerprint is None
    assert failed.error == (
        f"TCP connection to {node.address}:{node.port} was refused; check that sshd is running "
        f"on the node and listens on port {node.port}"
    )


def test_docker_daemon_stopped(lab: LabNodes) -> None:
    node = lab.nodes[0]
    node.set_docker_running(False)
    try:
        report = run(lab)
    finally:
        node.set_docker_running(True)
    assert [r.address for r in report.failures] == [node.address]
    failed = report.failures[0]
    assert failed.reachable and failed.authenticated and failed.docker_version is None
    assert failed.error is not None
    assert f"`docker version` failed on {lab.user}@{node.address}:{node.port} (exit 1)" in (
        failed.error
    )
    assert "Cannot connect to the Docker daemon" in failed.error
    assert "start Docker on the node" in failed.error


def test_docker_28_rejected_unless_ignored(lab: LabNodes) -> None:
    node = lab.nodes[0]
    node.docker_version = "28.0.1"
    try:
        strict = run(lab)
        ignored = run(lab, ignore_docker_version=True)
    finally:
        node.docker_version = DEFAULT_DOCKER_VERSION
    assert [r.address for r in strict.failures] == [node.address]
    failed = strict.failures[0]
    assert failed.docker_version == "28.0.1" and failed.authenticated
    assert failed.error is not None
    assert f"Docker 28.0.1 on {node.address}:{node.port} is not supported" in failed.error
    assert "27.2.x)" in failed.error and "ignore_docker_version" in failed.error
    assert ignored.ok and ignored.nodes[0].docker_version == "28.0.1"


def test_no_key_material_in_report_or_errors(lab: LabNodes) -> None:
    key = lab.client_private_key
    body = key_body_lines(key)
    lab.nodes[0].set_docker_running(False)
    try:
        report = run(
            lab, known_hosts=lab.nodes[0].known_hosts_line + "\n" + lab.nodes[1].known_hosts_line
        )
    finally:
        lab.nodes[0].set_docker_running(True)
    assert len(report.failures) == 2  # docker down, unknown host key
    text = repr(report) + repr(report.rows())
    assert "".join(body) not in text
    assert not [line for line in body if line in text]
    assert "PRIVATE KEY" not in text


def test_bad_private_keys_are_refused_without_echo(tmp_path: Path, lab: LabNodes) -> None:
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LW11c3Qtbm90LWxlYWs="
    armour = lab.client_private_key.strip().splitlines()  # a real key's first and last lines
    garbage = f"{armour[0]}\n{secret}\n{armour[-1]}\n"
    truncated = "\n".join(lab.client_private_key.splitlines()[:3]) + "\n"
    for text in (garbage, truncated, secret, ""):
        with pytest.raises(PreflightError) as caught:
            load_private_key(text)
        message = str(caught.value)
        assert "ed25519, ecdsa" in message and "rsa" in message
        assert secret not in message and "PRIVATE KEY" not in message
        assert not [line for line in key_body_lines(lab.client_private_key) if line in message]
    encrypted = tmp_path / "enc"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "passphrase", "-f", str(encrypted)], check=True
    )
    with pytest.raises(PreflightError, match="encrypted"):
        load_private_key(encrypted.read_text())
    ed448_pem = ed448.Ed448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(PreflightError, match="unsupported type"):
        load_private_key(ed448_pem.decode())
    with pytest.raises(PreflightError, match="cannot be parsed"):
        run(lab, private_key=garbage)


@pytest.mark.parametrize(
    ("key_type", "key_format"),
    [
        ("ed25519", "RFC4716"),
        ("ecdsa", "PEM"),
        ("ecdsa", "PKCS8"),
        ("rsa", "PEM"),
        ("rsa", "PKCS8"),
        ("rsa", "RFC4716"),
    ],
)
def test_load_private_key_formats(tmp_path: Path, key_type: str, key_format: str) -> None:
    path = keygen(tmp_path / "key", "-t", key_type, "-m", key_format)
    text = path.read_text().replace("\n", "\r\n").strip()  # as pasted into a form
    assert load_private_key(text).fingerprint == keygen_fingerprint(path.with_suffix(".pub"))


def test_bad_inputs_fail_before_touching_nodes(lab: LabNodes) -> None:
    connections = [n.connections() for n in lab.nodes]
    with pytest.raises(PreflightError, match="no Docker version data for Kubernetes 1.31"):
        run(lab, kubernetes_version="v1.31.1-rancher1-1")
    with pytest.raises(PreflightError, match="no nodes"):
        run(lab, targets=[])
    with pytest.raises(PreflightError, match="host_key_policy"):
        run(lab, policy="trust-everything")
    with pytest.raises(PreflightError, match="connect_timeout"):
        run(lab, connect_timeout=0)
    assert [n.connections() for n in lab.nodes] == connections
    assert run(lab, kubernetes_version="v1.31.1-rancher1-1", ignore_docker_version=True).ok


# --- the task: unreachable nodes get another try ----------------------------------------------

_PROBE: dict[str, Any] = {}  # the flow's inputs: no key material in flow parameters


@flow(name="preflight-retry-probe")
def _check_in_a_flow() -> PreflightReport:
    lab: LabNodes = _PROBE["lab"]
    access = NodeSshAccess(
        user=lab.user,
        private_key=SecretStr(lab.client_private_key),
        known_hosts=lab.known_hosts(),
        connect_timeout_seconds=5,
    )
    quick = check_nodes.with_options(retry_delay_seconds=0)  # retries themselves unchanged
    return quick(targets_of(lab), access, "", K8S, False)


@pytest.mark.usefixtures("prefect_server")
def test_a_node_that_comes_up_between_attempts_is_accepted(
    lab: LabNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = lab.nodes[2]
    reports: list[PreflightReport] = []

    def then_start_the_node(*args: Any, **kwargs: Any) -> PreflightReport:
        reports.append(preflight(*args, **kwargs))
        node.start()  # comes up after the first attempt found it down
        return reports[-1]

    monkeypatch.setattr(preflight_task, "preflight", then_start_the_node)
    _PROBE["lab"] = lab
    logins = [n.accepted_logins() for n in lab.nodes]
    node.stop()
    try:
        report = _check_in_a_flow()
    finally:
        node.start()
    assert [len(r.failures) for r in reports] == [1, 0]  # down, then up on the retry
    assert not reports[0].failures[0].reachable
    assert report.ok
    assert [n.accepted_logins() for n in lab.nodes] == [logins[0] + 2, logins[1] + 2, logins[2] + 1]


# --- fake servers: timeouts and concurrency -----------------------------------------------------


def listener(last_octet: int, backlog: int = 8) -> socket.socket:
    server = socket.create_server((f"127.0.0.{last_octet}", 0), backlog=backlog)
    server.settimeout(10)
    return server


def target_of(server: socket.socket, lab: LabNodes) -> NodeTarget:
    address, port = server.getsockname()
    return NodeTarget(address, port, lab.user)


def test_nodes_are_checked_concurrently(lab: LabNodes) -> None:
    """Three silent servers close only once all three hold a connection at the same time."""
    servers = [listener(43 + i) for i in range(3)]
    barrier = threading.Barrier(3, timeout=5)
    met: list[bool] = []

    def serve(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            try:
                barrier.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        report = run(lab, targets=[target_of(s, lab) for s in servers], banner_timeout=8.0)
    finally:
        for thread in threads:
            thread.join(timeout=10)
        for server in servers:
            server.close()
    assert met == [True, True, True]
    for result in report.nodes:
        assert result.reachable and not result.authenticated
        assert result.error is not None
        assert "closed the connection before sending an SSH banner" in result.error


def test_banner_timeout_is_named_and_the_client_hangs_up(lab: LabNodes) -> None:
    server = listener(46)
    hung_up: list[bool] = []

    def hold() -> None:
        """Accept, never send a banner, and see who ends the connection."""
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            try:
                while conn.recv(4096):  # the client's own banner, then its hang-up (b"")
                    pass
                hung_up.append(True)
            except OSError:  # our 10 s ran out (the client kept waiting) or a reset
                hung_up.append(False)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        report = run(lab, targets=[target_of(server, lab)], banner_timeout=0.5)
    finally:
        thread.join(timeout=15)
        server.close()
    error = report.nodes[0].error
    assert error is not None and "within 0.5s (banner timeout)" in error
    assert hung_up == [True]  # the banner timeout, not the server, ended the connection


def test_connect_timeout_is_named() -> None:
    # A listener whose accept queue is full drops further SYNs: the connect hangs, like a
    # firewalled port, until the connect timeout.
    server = listener(47, backlog=0)
    filler = socket.create_connection(server.getsockname(), timeout=2)
    try:
        report = preflight(
            [NodeTarget(*server.getsockname(), "nobody")],
            private_key=fresh_ed25519_key(),
            known_hosts="",
            recorded_known_hosts="",
            policy=HostKeyPolicy.REJECT,
            kubernetes_version=K8S,
            ignore_docker_version=False,
            connect_timeout=0.5,
        )
    finally:
        filler.close()
        server.close()
    result = report.nodes[0]
    assert not result.reachable
    assert result.error is not None and "timed out after 0.5s (connect timeout)" in result.error


# --- Docker version table (KDM data as used by rke v1.6.3) --------------------------------------


@pytest.mark.parametrize("version", ["v1.27.16-rancher1-1", "v1.28.14", "1.29.9", K8S, "v1.30"])
def test_allowed_docker_versions_for_supported_minors(version: str) -> None:
    assert allowed_docker_versions(version) == RKE_163_DOCKER_FOR_1_27_TO_1_30


def test_allowed_docker_versions_older_minors() -> None:
    assert allowed_docker_versions("v1.8.11-rancher2-1") == (
        "1.11.x",
        "1.12.x",
        "1.13.x",
        "17.03.x",
    )
    assert allowed_docker_versions("v1.12.10-rancher1-1")[-6:] == (
        "17.06.x",
        "17.09.x",
        "18.06.x",
        "18.09.x",
        "19.03.x",
        "20.10.x",
    )
    assert allowed_docker_versions("v1.22.17-rancher1-2")[-1] == "20.10.x"
    assert allowed_docker_versions("v1.24.17-rancher1-1")[-2:] == ("23.0.x", "24.0.x")
    assert allowed_docker_versions("v1.26.15-rancher1-1")[-1] == "25.0.x"


@pytest.mark.parametrize(
    ("docker", "allowed"),
    [
        ("27.2.1", True),
        ("27.2.0", True),
        ("26.1.4", True),
        ("20.10.24+dfsg1", True),
        ("24.0.7-ce", True),
        ("17.3.2", True),  # 17.03.x compared numerically, as go-semver does
        ("27.3.1", False),
        ("28.0.1", False),
        ("22.06.0", False),
        ("27.2", False),  # RKE's semver parse needs major.minor.patch
        ("garbage", False),
    ],
)
def test_docker_version_allowed_on_major_minor(docker: str, allowed: bool) -> None:
    assert docker_version_allowed(K8S, docker) is allowed


@pytest.mark.parametrize("version", ["v1.31.1-rancher1-1", "v1.7.16", "latest", ""])
def test_unknown_kubernetes_minor_is_an_error(version: str) -> None:
    with pytest.raises(ValueError):
        allowed_docker_versions(version)
    with pytest.raises(ValueError):
        docker_version_allowed(version, "26.1.4")
