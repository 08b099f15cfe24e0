"""Session fixtures: a real Prefect server on loopback (shared token on), and the lab."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
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

import pytest

from lab.nodes import LabNodes

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def prefect_server():
    """A real `prefect server start` on 127.0.0.1 with the shared token; stopped at the end."""
    from lab.embedded import EmbeddedServer

    server = EmbeddedServer(
        home=_HOME / "server",
        auth_string=AUTH_STRING,
        port=_PORT,
        ui=False,
        cache_dir=REPO / ".lab",
    )
    with server:
        try:
            yield server
        finally:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_rke() -> str:
    """Path of the lab's stand-in `rke` executable."""
    return str(BIN / "lab-rke")


@pytest.fixture(scope="session")
def lab_supervisor():
    """The lab supervisor that owns lab Kubernetes API servers; tests export its socket with
    `monkeypatch.setenv(lab.kube.supervisor.ENV, lab_supervisor.socket_path)`."""
    from lab.kube.supervisor import LabSupervisor

    with LabSupervisor(_HOME / "supervisor", export=False) as supervisor:
        yield supervisor


@pytest.fixture(scope="module")
def lab_nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Three lab nodes (real sshd) for one test module; each module gets its own addresses."""
    first = getattr(request.module, "LAB_FIRST_ADDRESS", 10)
    with LabNodes(tmp_path_factory.mktemp("nodes"), 3, first_address=first) as nodes:
        yield nodes


@pytest.fixture
def env(tmp_path, lab_nodes, lab_rke, lab_supervisor, monkeypatch):
    """Blocks, a state volume and a fresh cluster identity for one test's flow runs, with the
    lab supervisor exported (so clusters get their Kubernetes API)."""
    from tests.flowenv import Env

    return Env(tmp_path, lab_nodes, lab_rke, monkeypatch, lab_supervisor)
