"""The nodes' key exists on disk only while a command runs, and a killed run's key is swept."""

from __future__ import annotations

import subprocess
import sys

from cluster_mgmt import keyfile


def test_key_file_is_private_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(keyfile.tempfile, "tempdir", str(tmp_path))
    with keyfile.private_key_file("-----BEGIN KEY-----\nabc\n-----END KEY-----") as path:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert path.read_text().endswith("-----END KEY-----\n")
    assert not path.parent.exists()


def test_a_killed_processes_key_is_removed_by_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setattr(keyfile.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan = tmp_path / f"{keyfile.PREFIX}{dead.stdout.strip()}-xyz"
    orphan.mkdir()
    (orphan / "id_node").write_text("secret")
    mine = tmp_path / f"{keyfile.PREFIX}1-abc"  # pid 1 is alive: not ours to remove
    mine.mkdir()
    with keyfile.private_key_file("key"):
        assert not orphan.exists() and mine.exists()
