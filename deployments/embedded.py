"""The embedded default: a Prefect server on SQLite on 127.0.0.1, guarded by the shared token."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Self

import httpx

PREFECT = str(Path(sys.executable).parent / "prefect")
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def migrated_database(cache_dir: Path) -> Path:
    """A migrated SQLite database for this Prefect version, made once and then copied.

    Migrations are half of a fresh server's start-up; a copy starts in about 5 s.
    """
    template = cache_dir / f"prefect-{version('prefect')}.db"
    if not template.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
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
        partial.rename(template)
    return template


@dataclass
class EmbeddedServer:
    """`prefect server start` on loopback with `PREFECT_SERVER_API_AUTH_STRING`; a context manager."""

    home: Path
    auth_string: str
    port: int = field(default_factory=free_port)
    ui: bool = True
    cache_dir: Path | None = None
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

    def start(self, timeout: float = 90.0) -> EmbeddedServer:
        self.home.mkdir(parents=True, exist_ok=True)
        db = self.home / "prefect.db"
        if not db.exists():
            shutil.copyfile(migrated_database(self.cache_dir or self.home / "cache"), db)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            **QUIET,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}",
            "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
            "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_UI_API_URL": self.api_url,
        }
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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
        _stop(self.process)

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
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "worker.log"

    def start(self) -> EmbeddedWorker:
        self.home.mkdir(parents=True, exist_ok=True)
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
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [*command, "--install-policy", "never"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Stop the worker and the flow runs it started (grace 0: SIGKILL at once)."""
        _stop(self.process, grace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop(process: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM a process group we started; SIGKILL it if it lingers."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM if grace else signal.SIGKILL)
    try:
        process.wait(timeout=grace or 5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
