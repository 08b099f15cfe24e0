"""Processes the service starts, and the embedded server's own: private files, one UI, and
nothing left running after SIGTERM, SIGINT, SIGHUP or SIGKILL of the lab server or the demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import AUTH_STRING
from tests.processes import alive, cmdline, kill_tree, started_by


@pytest.fixture(scope="module")
def own_server():
    """A second embedded server with its UI, in a folder every local user may traverse."""
    from lab.embedded import EmbeddedServer

    base = Path(tempfile.mkdtemp(prefix="cluster-mgmt-own-"))
    base.chmod(0o755)
    server = EmbeddedServer(
        home=base / "prefect", auth_string=AUTH_STRING, cache_dir=base / "cache"
    )
    with server:
        yield server
    shutil.rmtree(base, ignore_errors=True)


def test_embedded_server_keeps_secrets_private(own_server):
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: own_server.api_url}):
        Secret(value="s3cret-value").save("at-rest", overwrite=True)
    home = own_server.home
    db = home / "prefect.db"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in [db, own_server.log_path, *own_server.cache_dir.glob("*.db")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    key_file = home.parent / "encryption-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with sqlite3.connect(db) as connection:
        keys = [row[0] for row in connection.execute("SELECT key FROM configuration")]
        [data] = connection.execute(
            "SELECT data FROM block_document WHERE name = 'at-rest'"
        ).fetchone()
    assert "ENCRYPTION_KEY" not in keys
    assert "s3cret-value" not in data
    assert Fernet(key_file.read_text().encode()).decrypt(json.loads(data).encode())
    for path in (db, home):
        denied = subprocess.run(
            ["runuser", "-u", "nobody", "--", "ls", "-l", str(path)],
            check=False,
            capture_output=True,
        )
        assert denied.returncode != 0, denied.stdout


def test_run_urls_open_the_ui_the_root_opens(own_server):
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from deployments.client import run_url

    html = {"Accept": "text/html"}
    root = httpx.get(own_server.ui_url + "/", headers=html, follow_redirects=True)
    with temporary_settings(updates={PREFECT_API_URL: own_server.api_url, PREFECT_UI_URL: ""}):
        url = run_url(uuid.uuid4())
    page = httpx.get(url, headers=html, follow_redirects=True)
    assert root.status_code == page.status_code == 200
    base = root.url.path  # where the root's redirect lands: the default UI's base
    assert base != "/" and str(page.url) == url and page.url.path.startswith(base)
    assert page.text == root.text  # the same single-page app


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT-while-ignored", "SIGHUP", "SIGKILL"])
def test_lab_server_leaves_no_process_behind(tmp_path, how):
    lab_cli = str(Path(sys.executable).parent / "cluster-mgmt-lab")
    command = [lab_cli, "server", "--workdir", str(tmp_path / "lab"), "--nodes", "1"]
    if how == "SIGINT-while-ignored":  # as `cluster-mgmt-lab server &` in a script starts it
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in process.stdout:
            if "Lab nodes up" in line:
                break
        else:
            pytest.fail(f"the lab server did not come up (exit {process.wait()})")
        started = started_by(process.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in started]
        assert any(b"server\0start" in c for c in commands)
        assert any(b"worker\0start" in c for c in commands)
        assert any(b"sshd" in c for c in commands)
        server = next(p for p, c in zip(started, commands, strict=True) if b"server\0start" in c)
        ignored = int(
            re.search(r"SigIgn:\s*(\w+)", Path(f"/proc/{server}/status").read_text()).group(1),
            16,
        )
        assert not ignored & (1 << (signal.SIGINT - 1)), "the server inherited SIGINT ignored"
        sig = {"SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP, "SIGKILL": signal.SIGKILL}.get(
            how, signal.SIGINT
        )
        process.send_signal(sig)
        process.wait(timeout=60)
        if sig != signal.SIGKILL:
            assert process.returncode == 0, process.stdout.read()
        deadline = time.monotonic() + 40
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = alive(started)
        assert not left, [cmdline(p) for p in left]
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
        process.wait(timeout=10)


def test_demo_stopped_mid_provision_leaves_no_process_behind(tmp_path):
    """SIGTERM (`timeout`, `docker stop`) while the demo's provision runs: the flow run, the
    worker, the server and the lab nodes all stop, and the demo says it was stopped."""
    lab_cli = str(Path(sys.executable).parent / "cluster-mgmt-lab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    process = subprocess.Popen(
        [lab_cli, "demo", "--workdir", str(tmp_path / "demo"), "--nodes", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in process.stdout:
            if "Provisioning demo/web" in line:
                break
        else:
            pytest.fail(f"the demo did not get to its provision (exit {process.wait()})")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the worker has started the flow run
            started = started_by(process.pid)
            if any(b"prefect.engine" in cmdline(pid) for pid in started):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the worker never started the provision's flow run")
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
        assert process.returncode == 130 and "stopped (SIGTERM)" in output, output
        deadline = time.monotonic() + 40
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = alive(started)
        assert not left, [cmdline(p) for p in left]
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
        process.wait(timeout=10)
