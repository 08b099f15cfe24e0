"""The embedded default: a Prefect server on SQLite on 127.0.0.1, guarded by the shared token.

Everything it keeps is private to its user: the server home is 0700 and its files 0600, and
the key that encrypts Secret blocks lives outside the database (`PREFECT_SERVER_ENCRYPTION_KEY`
from the environment, else a 0600 key file), so a copy of `prefect.db` alone decrypts nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Self

import httpx
from cryptography.fernet import Fernet

PREFECT = str(Path(sys.executable).parent / "prefect")
ENCRYPTION_KEY = "PREFECT_SERVER_ENCRYPTION_KEY"
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The content of a 0600 file, created with `make()` if it does not exist yet."""
    if not path.exists():
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server-like child in its own session, its log 0600, with default signal
    dispositions (a parent started with SIGINT ignored, as `cmd &` in a script does, must not
    hand that on) and no terminal input."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    ignored = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if _ignored(s)]
    try:
        for sig in ignored:  # exec resets handled signals to SIG_DFL, ignored ones stay ignored
            signal.signal(sig, _still_ignored)
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            restore_signals=True,
        )
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)
        os.close(fd)


def _ignored(sig: signal.Signals) -> bool:
    return signal.getsignal(sig) == signal.SIG_IGN


def _still_ignored(*_: object) -> None:
    """A handler that does nothing: ignored here, default in the child after exec."""


def migrated_database(cache_dir: Path) -> Path:
    """A migrated SQLite database for this Prefect version (0600), made once and then copied.

    Migrations are half of a fresh server's start-up; a copy starts in about 5 s. The cache
    directory is made 0700 on every call, also when it (and the template) already existed.
    """
    private_dir(cache_dir)
    template = cache_dir / f"prefect-{version('prefect')}.db"
    if not template.exists():
        partial = template.with_suffix(f".{os.getpid()}.tmp")
        env = {
            **os.environ,
            **QUIET,
            "PREFECT_HOME": str(cache_dir),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{partial}",
        }
        subprocess.run(
            [PREFECT, "server", "database", "upgrade", "-y"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        partial.chmod(0o600)
        partial.rename(template)
    template.chmod(0o600)
    return template


@dataclass
class EmbeddedServer:
    """`prefect server start` on loopback with `PREFECT_SERVER_API_AUTH_STRING`; a context manager.

    The Secret-block key comes from `PREFECT_SERVER_ENCRYPTION_KEY` in the environment, else
    from `key_file` (default `<home>/../encryption-key`, created 0600 on first start).
    `database_url` (e.g. `postgresql+asyncpg://...`) replaces the SQLite file; the server
    migrates that database as it starts.
    """

    home: Path
    auth_string: str
    port: int = field(default_factory=free_port)
    ui: bool = True
    cache_dir: Path | None = None
    key_file: Path | None = None
    database_url: str | None = None
    process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    @property
    def database(self) -> Path:
        return self.home / "prefect.db"

    def encryption_key(self) -> str:
        if os.environ.get(ENCRYPTION_KEY):
            return os.environ[ENCRYPTION_KEY]
        path = self.key_file or self.home.parent / "encryption-key"
        return secret_file(path, lambda: Fernet.generate_key().decode())

    def start(self, timeout: float = 90.0) -> EmbeddedServer:
        private_dir(self.home)
        database_url, migrate = self.database_url, "true"
        if database_url is None:
            db = self.database
            if not db.exists():
                shutil.copyfile(migrated_database(self.cache_dir or self.home / "cache"), db)
            db.chmod(0o600)  # SQLite gives its -wal/-shm/-journal files the database's mode
            database_url, migrate = f"sqlite+aiosqlite:///{db}", "false"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            **QUIET,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": migrate,
            "PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
            ENCRYPTION_KEY: self.encryption_key(),
            "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_UI_API_URL": self.api_url,
        }
        command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = spawn(command, env, self.log_path)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Prefect server did not start; see {self.log_path}")
            time.sleep(0.2)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_group(self.process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedWorker:
    """A process worker for `pool`, polling often so runs start within a few seconds."""

    home: Path
    api_url: str
    auth_string: str
    pool: str = "cluster-mgmt"
    query_seconds: float = 2.0
    extra_env: dict[str, str] = field(default_factory=dict)
    limit: int | None = None  # flow runs at once (`--limit`); None: no limit
    name: str | None = None
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "worker.log"

    def start(self) -> EmbeddedWorker:
        private_dir(self.home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            **QUIET,
            **self.extra_env,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_WORKER_QUERY_SECONDS": str(self.query_seconds),
            "PREFECT_WORKER_PREFETCH_SECONDS": "10",
        }
        command = [PREFECT, "worker", "start", "--pool", self.pool, "--type", "process"]
        command += ["--limit", str(self.limit)] if self.limit else []
        command += ["--name", self.name] if self.name else []
        self.process = spawn([*command, "--install-policy", "never"], env, self.log_path)
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Stop the worker and the flow runs it started (grace 0: SIGKILL at once)."""
        stop_group(self.process, grace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(process: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM a process group we started; SIGKILL it if it lingers."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM if grace else signal.SIGKILL)
    try:
        process.wait(timeout=grace or 5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
