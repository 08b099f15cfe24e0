"""The SSH private key on disk only while a command needs it, never on the state volume."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster_mgmt.redact import register_secret


@contextmanager
def private_key_file(private_key: str) -> Iterator[Path]:
    """A 0600 file holding `private_key` in a fresh 0700 temporary folder, removed afterwards."""
    register_secret(private_key)
    folder = Path(tempfile.mkdtemp(prefix="cluster-mgmt-key-"))
    path = folder / "id_node"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(private_key if private_key.endswith("\n") else private_key + "\n")
        yield path
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()
