"""The embedded server's secrets at rest: the Secret-block key from the environment, and a
private cache of the migrated database."""

from __future__ import annotations

import stat
from importlib.metadata import version
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from lab import embedded
from lab.embedded import ENCRYPTION_KEY, EmbeddedServer, migrated_database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_cache_directory_is_made_private_also_when_the_template_exists(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    template = cache / f"prefect-{version('prefect')}.db"
    template.write_bytes(b"a migrated database")
    template.chmod(0o644)

    assert migrated_database(cache) == template
    assert template.read_bytes() == b"a migrated database"  # reused, not migrated again
    assert mode(cache) == 0o700
    assert mode(template) == 0o600


class Spawned(Exception):
    """Stops `start` where it would run the server, with the environment it would get."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env


def server_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment `EmbeddedServer.start` gives `prefect server start`."""

    def spawn(command: list[str], env: dict[str, str], log: Path) -> None:
        raise Spawned(env)

    monkeypatch.setattr(embedded, "spawn", spawn)
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    (cache / f"prefect-{version('prefect')}.db").write_bytes(b"")
    with pytest.raises(Spawned) as spawned:
        EmbeddedServer(home=tmp_path / "prefect", auth_string="ops:x", cache_dir=cache).start()
    return spawned.value.env


def test_the_encryption_key_from_the_environment_reaches_the_server(tmp_path, monkeypatch):
    # The server encrypts Secret blocks with PREFECT_SERVER_ENCRYPTION_KEY from its environment
    # (test_service proves it with a key file's key): a key given that way is passed on as is,
    # and no key file is written beside the data.
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(ENCRYPTION_KEY, key)
    assert server_environment(tmp_path, monkeypatch)[ENCRYPTION_KEY] == key
    assert not (tmp_path / "encryption-key").exists()


def test_without_one_the_key_comes_from_a_private_key_file(tmp_path, monkeypatch):
    monkeypatch.delenv(ENCRYPTION_KEY, raising=False)
    key = server_environment(tmp_path, monkeypatch)[ENCRYPTION_KEY]
    key_file = tmp_path / "encryption-key"
    assert key_file.read_text().strip() == key
    assert mode(key_file) == 0o600
    Fernet(key.encode())  # a usable key
    assert server_environment(tmp_path, monkeypatch)[ENCRYPTION_KEY] == key  # kept, not remade
