"""The RKE driver: argv, streaming, levels, redaction, warnings, hard timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cluster_mgmt import die_with_parent
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


def group_members(pgid: int) -> list[int]:
    """Running processes in process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def wait_for(predicate, what: str, seconds: float = 30.0) -> None:
    """Poll until `predicate()` holds; a bound against hanging, not a speed check."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


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
    result, lines = collect(RkeDriver(binary=binary, timeout_seconds=1.5), tmp_path)
    assert result.timed_out and not result.ok
    assert result.error == "rke up did not finish within 1.5 s; killed (last lines: waiting)"
    rke, grandchild = map(int, pids.read_text().split())
    assert not alive(rke)  # reaped by the driver
    # the group was SIGKILLed; the kernel finishes the grandchild's exit asynchronously
    wait_for(lambda: not alive(grandchild) and group_members(rke) == [], "the group to exit")
    assert ("info", "waiting") in lines


def test_a_killed_rke_is_reported_by_signal_with_its_last_lines(tmp_path: Path):
    secret = "hunter2-not-for-logs-0123456789"
    register_secret(secret)
    binary = fake_rke(
        tmp_path,
        f"""
        import signal
        for n in range(5):
            print(f'level=info msg="step {{n}}"')
        print('token: {secret}', flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    result, _ = collect(RkeDriver(binary=binary), tmp_path)
    assert result.exit_code == -9 and not result.ok and not result.timed_out
    assert result.error.startswith("rke up was killed by SIGKILL (last lines: step 3 | step 4 | ")
    assert secret not in result.error


def test_a_failure_without_a_fatal_line_names_the_exit_code_and_last_lines(tmp_path: Path):
    binary = fake_rke(tmp_path, "print('level=info msg=almost')\nsys.exit(4)\n")
    result, _ = collect(RkeDriver(binary=binary), tmp_path)
    assert result.error == "rke up exited with 4 (last lines: almost)"


def test_a_raising_sink_never_stalls_rke(tmp_path: Path):
    """rke writes far more than a pipe holds after the sink fails; it still runs to its end."""
    done = tmp_path / "done"
    binary = fake_rke(
        tmp_path,
        f"""
        print('level=info msg="Successfully Deployed state file at [./cluster.rkestate]"')
        for n in range(4000):
            print(f'level=info msg="line {{n}} {{"x" * 60}}"')
        open({str(done)!r}, 'w').write('done')
    """,
    )
    seen: list[str] = []

    def sink(level: str, message: str) -> None:
        seen.append(message)
        if message.startswith("Successfully Deployed"):
            raise OSError(28, "No space left on device")

    # the timeout only bounds the test if the reader stalls; it is not what is checked
    result = RkeDriver(binary=binary, timeout_seconds=60).up(tmp_path, sink)
    assert result.exit_code == 0 and not result.timed_out and done.exists()
    assert len(seen) == 4001  # every line still reached the sink
    assert not result.ok
    assert result.error == (
        "rke up exited with 0, but handling rke's output failed: "
        "OSError: [Errno 28] No space left on device"
    )


REPORT_DEATH_SIGNAL = """
import ctypes
sig = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
"""


RUN_THE_DRIVER = """
import sys
from pathlib import Path
from cluster_mgmt.driver import RkeDriver
RkeDriver(binary=sys.argv[1]).up(Path(sys.argv[2]), lambda *line: None)
"""


def test_rke_dies_with_the_process_that_runs_the_driver(tmp_path: Path):
    report = tmp_path / "rke.pid"
    binary = fake_rke(
        tmp_path,
        REPORT_DEATH_SIGNAL
        + textwrap.dedent(f"""
        open({str(report)!r} + '.tmp', 'w').write(f'{{os.getpid()}} {{os.getsid(0)}} {{sig.value}}')
        os.rename({str(report)!r} + '.tmp', {str(report)!r})
        print('level=info msg=started', flush=True)
        time.sleep(300)
    """),
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN_THE_DRIVER,
            binary,
            str(tmp_path),
        ]
    )
    try:
        wait_for(report.exists, "rke to start")
        rke, session, death_signal = map(int, report.read_text().split())
        assert session == rke  # its own session and group, so a timeout can kill them all
        assert death_signal == signal.SIGKILL  # the mechanism: the kernel kills it with us
        parent.kill()
        parent.wait()
        wait_for(lambda: not alive(rke), "rke to die with its parent")
        assert group_members(rke) == []
    finally:
        parent.kill()
        parent.wait()


def test_the_wrapper_never_starts_a_command_whose_parent_is_gone(tmp_path: Path):
    marker = tmp_path / "ran"
    wrapper = [sys.executable, "-I", die_with_parent.__file__]
    command = ["/bin/sh", "-c", f"touch {marker}"]
    # a parent that died before the death signal was set: the child now belongs to another
    orphaned = subprocess.run([*wrapper, "1", "--", *command], check=False)
    assert orphaned.returncode == 125 and not marker.exists()
    ran = subprocess.run([*wrapper, str(os.getpid()), "--", *command], check=False)
    assert ran.returncode == 0 and marker.exists()
    usage = subprocess.run([*wrapper, "x", *command], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_no_python_runs_between_fork_and_exec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = {}
    real = subprocess.Popen

    def spy(args, **kwargs):
        seen.update(kwargs)
        return real(args, **kwargs)

    monkeypatch.setattr("cluster_mgmt.driver.subprocess.Popen", spy)
    binary = fake_rke(tmp_path, REPORT_DEATH_SIGNAL + "print(f'level=info msg={sig.value}')\n")
    result, lines = collect(RkeDriver(binary=binary), tmp_path)
    assert result.ok and lines == [("info", str(int(signal.SIGKILL)))]
    assert seen.get("preexec_fn") is None and seen["start_new_session"] is True


def test_missing_binary_is_a_clear_error():
    with pytest.raises(DriverError, match="rke-settings.binary"):
        RkeDriver(binary="/nonexistent/rke").executable()


def test_parse_line_handles_go_quoting():
    assert parse_line('time="x" level=info msg="say \\"hi\\""') == ("info", 'say "hi"')
    assert parse_line("plain text") == ("info", "plain text")
