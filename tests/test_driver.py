"""The RKE driver: argv, streaming, levels, redaction, warnings, hard timeout."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from cluster_mgmt.driver import DriverError, RkeDriver, parse_line
from cluster_mgmt.redact import register_secret


def fake_rke(tmp_path: Path, body: str) -> str:
    script = tmp_path / "rke"
    script.write_text(
        f"#!{sys.executable}\nimport sys, os, time, subprocess\n" + textwrap.dedent(body)
    )
    script.chmod(0o755)
    return str(script)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie awaiting its reaper is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def collect(driver: RkeDriver, workdir: Path, op: str = "up"):
    lines: list[tuple[str, str]] = []
    result = getattr(driver, op)(workdir, lambda level, msg: lines.append((level, msg)))
    return result, lines


def test_argv_levels_and_warnings(tmp_path: Path):
    binary = fake_rke(
        tmp_path,
        """
        print(' '.join(sys.argv[1:]) + ' cwd=' + os.getcwd())
        print('time="2024-10-04T15:40:30-07:00" level=warning msg="Failed to deploy addon execute job [rke-network-plugin]: timeout"')
        print('time="2024-10-04T15:40:31-07:00" level=info msg="Finished building Kubernetes cluster successfully"')
    """,
    )
    driver = RkeDriver(binary=binary, ignore_docker_version=True)
    result, lines = collect(driver, tmp_path)
    assert result.ok and result.exit_code == 0
    assert lines[0] == (
        "info",
        f"up --config {tmp_path}/cluster.yml --ignore-docker-version cwd={tmp_path}",
    )
    assert lines[1][0] == "warning"
    assert result.warnings == ["Failed to deploy addon execute job [rke-network-plugin]: timeout"]
    assert result.command[0] == "rke"


def test_remove_is_forced_and_failure_reports_the_fatal_line(tmp_path: Path):
    binary = fake_rke(
        tmp_path,
        """
        assert '--force' in sys.argv and '-q' not in sys.argv
        print('time="2024" level=fatal msg="Failed to validate cluster: Cluster can\\'t have duplicate node: 10.0.0.1"')
        sys.exit(1)
    """,
    )
    result, _ = collect(RkeDriver(binary=binary), tmp_path, "remove")
    assert not result.ok and result.exit_code == 1
    assert result.error == "Failed to validate cluster: Cluster can't have duplicate node: 10.0.0.1"


def _openssh_key() -> str:
    """A fresh private key in OpenSSH format (keys are made at run time, never committed)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def test_secrets_never_reach_the_sink(tmp_path: Path):
    secret = _openssh_key()
    register_secret(secret)
    binary = fake_rke(
        tmp_path,
        f"""
        print({secret!r})
        print('token: abcdefghijklmnop1234')
    """,
    )
    _, lines = collect(RkeDriver(binary=binary), tmp_path)
    text = "\n".join(m for _, m in lines)
    body = secret.strip().splitlines()[1:-1]
    assert body and not [line for line in body if line in text]
    assert "abcdefghijklmnop1234" not in text


def test_timeout_kills_the_whole_process_group(tmp_path: Path):
    pids = tmp_path / "pids"
    binary = fake_rke(
        tmp_path,
        f"""
        child = subprocess.Popen(['sleep', '300'])
        open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')
        print('level=info msg=waiting', flush=True)
        time.sleep(300)
    """,
    )
    started = time.monotonic()
    result, lines = collect(RkeDriver(binary=binary, timeout_seconds=1.5), tmp_path)
    assert result.timed_out and not result.ok
    assert "did not finish within 1.5 s" in result.error
    assert time.monotonic() - started < 30
    for pid in map(int, pids.read_text().split()):
        assert not alive(pid)
    assert ("info", "waiting") in lines


def test_missing_binary_is_a_clear_error():
    with pytest.raises(DriverError, match="rke-settings.binary"):
        RkeDriver(binary="/nonexistent/rke").executable()


def test_parse_line_handles_go_quoting():
    assert parse_line('time="x" level=info msg="say \\"hi\\""') == ("info", 'say "hi"')
    assert parse_line("plain text") == ("info", "plain text")
