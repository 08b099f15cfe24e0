"""CLI commands for backups of the state volume (`register(app)`)."""

from __future__ import annotations

from typing import Annotated

import typer

Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the run to its end; exit 1 if it fails.")
]


def backup_state(
    state_volume: Annotated[
        str, typer.Option(help="Name of the cluster-state-volume block.")
    ] = "default",
    aws_credentials: Annotated[
        str, typer.Option(help="Name of the cluster-mgmt-aws-credentials block.")
    ] = "default",
    retain: Annotated[
        int, typer.Option(min=1, max=1000, help="Snapshots of ours to keep, this one included.")
    ] = 7,
    wait: Wait = False,
) -> None:
    """Take an EBS snapshot of the state volume now (backup-state/default)."""
    from deployments.cli import start_run

    parameters = {
        "state_volume": state_volume,
        "aws_credentials": aws_credentials,
        "retain": retain,
    }
    start_run("backup-state/default", parameters, wait)


def register(app: typer.Typer) -> None:
    """Add these commands to the `cluster-mgmt` app."""
    app.command(name="backup-state")(backup_state)
