"""The embedded default with the lab: server, worker, lab nodes and lab rke, bootstrapped."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deployments.embedded import EmbeddedServer, EmbeddedWorker
from lab import rke_binary
from lab.kube.supervisor import ENV, LabSupervisor
from lab.nodes import LabNodes


def _auth_file(workdir: Path) -> Path:
    """The shared token, kept in a 0600 file (never printed)."""
    path = workdir / "api-auth-string"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"operator:{secrets.token_urlsafe(24)}")
    return path


@contextmanager
def embedded_service(
    workdir: Path, nodes: int, echo: Callable[[str], None] = print
) -> Iterator[tuple[EmbeddedServer, LabNodes]]:
    """Server (shared token), worker, lab nodes and bootstrap; everything stopped on exit."""
    workdir = workdir.resolve()
    auth_file = _auth_file(workdir)
    auth_string = auth_file.read_text().strip()
    server = EmbeddedServer(home=workdir / "prefect", auth_string=auth_string)
    # Prefect reads its settings when first imported: configure the client before that.
    os.environ |= {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_API_AUTH_STRING": auth_string,
        "PREFECT_HOME": str(workdir / "client"),
        "DO_NOT_TRACK": "1",
    }
    supervisor = LabSupervisor(workdir / "supervisor", export=False)  # the clusters' APIs
    worker = EmbeddedWorker(
        home=workdir / "worker",
        api_url=server.api_url,
        auth_string=auth_string,
        extra_env={ENV: supervisor.socket_path},
    )
    echo(f"Starting Prefect server (log {server.log_path}) and worker (log {worker.log_path})")
    with supervisor, server, worker, LabNodes(workdir / "nodes", nodes, first_address=2) as lab:
        from deployments.bootstrap import BlockValues, bootstrap  # imports prefect: after env

        bootstrap(
            BlockValues(
                state_root=str(workdir / "state"),
                ssh_user=lab.user,
                ssh_private_key=lab.client_private_key,
                known_hosts=lab.known_hosts(),
                rke_binary=rke_binary(),
                init_volume=True,
            ),
            overwrite_blocks=True,  # lab ports and host keys change at every start
        )
        echo(f"Prefect UI: {server.ui_url}  (login token in {auth_file})")
        yield server, lab
