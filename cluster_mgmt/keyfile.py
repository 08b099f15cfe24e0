"""The SSH private key on disk only while a command needs it, never on the state volume."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster_mgmt.redact import register_secret

PREFIX = "cluster-mgmt-key-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphaned_keys(folder: Path | None = None) -> list[Path]:
    """Delete key folders whose process died without cleaning up (a killed worker)."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = path.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def private_key_file(private_key: str) -> Iterator[Path]:
    """A 0600 file holding `private_key` in a fresh 0700 temporary folder, removed afterwards."""
    register_secret(private_key)
    remove_orphaned_keys()
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    path = folder / "id_node"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(private_key if private_key.endswith("\n") else private_key + "\n")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
