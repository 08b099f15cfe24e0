"""The embedded default with the lab: server, worker, lab nodes and lab rke, bootstrapped."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lab import rke_binary
from lab.embedded import EmbeddedServer, EmbeddedWorker, private_dir, secret_file
from lab.kube.supervisor import ENV, LabSupervisor
from lab.nodes import LabNodes
from lab.reaper import Reaper


@contextmanager
def embedded_service(
    workdir: Path, nodes: int, echo: Callable[[str], None] = print, first_address: int = 2
) -> Iterator[tuple[EmbeddedServer, LabNodes]]:
    """Server (shared token), worker, lab nodes and bootstrap; everything stopped on exit, and
    by a reaper should this process be killed outright. Lab nodes listen on 127.0.0.<n> from
    `first_address` on.

    The shared token (`api-auth-string`) and the Secret-block key (`encryption-key`) are 0600
    files in `workdir` (0700), never printed.
    """
    workdir = private_dir(workdir.resolve())
    auth_file = workdir / "api-auth-string"
    auth_string = secret_file(auth_file, lambda: f"operator:{secrets.token_urlsafe(24)}")
    server = EmbeddedServer(
        home=workdir / "prefect", auth_string=auth_string, key_file=workdir / "encryption-key"
    )
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
    lab = LabNodes(workdir / "nodes", nodes, first_address=first_address)
    echo(f"Starting Prefect server (log {server.log_path}) and worker (log {worker.log_path})")
    with Reaper() as reaper, supervisor, server, lab:
        # By process group too: sshd rewrites its environment (and with it the marker).
        for process in (server.process, *(n.process for n in lab.nodes)):
            reaper.track(process.pid)
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
        # After bootstrap: a worker creates a missing pool itself, with the default template.
        with worker:
            reaper.track(worker.process.pid)
            echo(f"Prefect UI: {server.ui_url}  (login token in {auth_file})")
            yield server, lab
