"""`cluster-mgmt`: the operator's command line."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Cluster Management Service: RKE clusters provisioned, watched and torn down by Prefect.",
    no_args_is_help=True,
    add_completion=False,
)


def _auth_file(workdir: Path) -> Path:
    """The shared token, kept in a 0600 file (never printed)."""
    path = workdir / "api-auth-string"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"operator:{secrets.token_urlsafe(24)}")
    return path


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the server, lab and state.")] = Path(
        ".lab/demo"
    ),
    nodes: Annotated[int, typer.Option(min=1, max=9, help="Lab nodes in the cluster.")] = 3,
    keep: Annotated[
        bool, typer.Option(help="Keep the cluster and the server running until Ctrl-C.")
    ] = False,
) -> None:
    """Provision a cluster on lab nodes and tear it down, on the embedded default.

    Starts a Prefect server on 127.0.0.1 (SQLite, shared token), lab nodes (real sshd) and the
    lab's stand-in rke, then runs provision-cluster and teardown-cluster against them. Watch
    them in the UI at the printed URL; its login asks for the token in <workdir>/api-auth-string.
    """
    from deployments.embedded import EmbeddedServer
    from lab.nodes import LabNodes

    workdir = workdir.resolve()
    state_root = workdir / "state"
    auth_file = _auth_file(workdir)
    auth_string = auth_file.read_text().strip()
    server = EmbeddedServer(home=workdir / "prefect", auth_string=auth_string)
    # Prefect reads its settings when first imported: configure the client before that.
    os.environ |= {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_API_AUTH_STRING": auth_string,
        "PREFECT_HOME": str(workdir / "client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    typer.echo(f"Starting Prefect server (log: {server.log_path}) ...")
    shutil.rmtree(workdir / "nodes", ignore_errors=True)
    with server, LabNodes(workdir / "nodes", nodes, first_address=2) as lab:
        typer.echo(f"Prefect UI: {server.ui_url}  (token: {auth_file})")
        _run_demo(lab, state_root, keep)


def _run_demo(lab, state_root: Path, keep: bool) -> None:
    from pydantic import SecretStr

    from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings
    from cluster_mgmt.spec import ClusterSpec, NodeSpec, expand_hosts
    from flows.provision import provision_cluster
    from flows.teardown import teardown_cluster
    from lab import rke_binary

    ClusterStateVolume(root=str(state_root)).save("default", overwrite=True)
    NodeSshAccess(
        user=lab.user,
        private_key=SecretStr(lab.client_private_key),
        known_hosts=lab.known_hosts(),
    ).save("default", overwrite=True)
    RkeSettings(binary=rke_binary()).save("default", overwrite=True)
    shorthand = expand_hosts([n.address for n in lab.nodes])
    spec = ClusterSpec(
        environment="demo",
        name="web",
        nodes=[
            NodeSpec(address=node.address, port=node.port, roles=role.roles)
            for node, role in zip(lab.nodes, shorthand, strict=True)
        ],
    )
    typer.echo(f"Provisioning {spec.environment}/{spec.name} on {len(spec.nodes)} lab nodes ...")
    result = provision_cluster(spec=spec)
    typer.echo(f"provision-cluster: {result['phase']} — {result['message']}")
    if keep:
        typer.echo("Cluster is up; press Ctrl-C to tear it down and stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    result = teardown_cluster(environment=spec.environment, name=spec.name)
    typer.echo(f"teardown-cluster: {result['phase']} — state archived at {result['archive']}")


if __name__ == "__main__":
    app()
