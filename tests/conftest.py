"""Session fixtures: a real Prefect server on loopback (shared token on), and the lab."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="cluster-mgmt-tests-"))
with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    _PORT = _s.getsockname()[1]
API_URL = f"http://127.0.0.1:{_PORT}/api"
AUTH_STRING = "ops:" + os.urandom(12).hex()
# Settings are read when prefect is imported: set them before anything imports it.
os.environ.update(
    {
        "PREFECT_HOME": str(_HOME / "client"),
        "PREFECT_API_URL": API_URL,
        "PREFECT_API_AUTH_STRING": AUTH_STRING,
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    }
)

import httpx
import pytest

from lab.nodes import LabNodes

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEMPLATE_DB = REPO / ".lab" / "prefect-template.db"


def _migrated_template(env: dict[str, str]) -> Path:
    """A migrated SQLite database, made once per checkout: server start-up drops to ~5 s."""
    import prefect

    template = TEMPLATE_DB.with_name(f"prefect-{prefect.__version__}.db")
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_suffix(".tmp")
        partial.unlink(missing_ok=True)
        url = f"sqlite+aiosqlite:///{partial}"
        subprocess.run(
            [str(BIN / "prefect"), "server", "database", "upgrade", "-y"],
            env={**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": url},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        partial.rename(template)
    return template


@pytest.fixture(scope="session")
def prefect_server() -> str:
    """A real `prefect server start` on 127.0.0.1 with the shared token; stopped at the end."""
    home = _HOME / "server"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false"}
    env.pop("PREFECT_API_AUTH_STRING")
    db = home / "prefect.db"
    shutil.copyfile(_migrated_template(env), db)
    env |= {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}",
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_API_AUTH_STRING": AUTH_STRING,
    }
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(_PORT)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{API_URL}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"prefect server did not start:\n{(home / 'server.log').read_text()}"
            )
        time.sleep(0.2)
    try:
        yield API_URL
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
        log.close()
        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_rke() -> str:
    """Path of the lab's stand-in `rke` executable."""
    return str(BIN / "lab-rke")


@pytest.fixture(scope="module")
def lab_nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Three lab nodes (real sshd) for one test module; each module gets its own addresses."""
    first = getattr(request.module, "LAB_FIRST_ADDRESS", 10)
    with LabNodes(tmp_path_factory.mktemp("nodes"), 3, first_address=first) as nodes:
        yield nodes
