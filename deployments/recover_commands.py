"""CLI commands for state recovery and backup drills (`register(app)`)."""

from __future__ import annotations

from typing import Annotated

import typer

from cluster_mgmt.recovery import RecoverySource
from deployments.cluster_commands import Wait, _start


def recover(
    environment: str,
    name: str,
    source: Annotated[
        RecoverySource, typer.Option("--source", help="Where to take the state from.")
    ],
    entry: Annotated[
        str | None,
        typer.Option("--entry", help="History or archive entry (directory name); the newest."),
    ] = None,
    wait: Wait = False,
) -> None:
    """Recover a cluster's RKE state (recover-cluster-state/default); its CA is checked
    against the live cluster before anything is written."""
    parameters = {"environment": environment, "name": name, "source": source.value}
    if entry is not None:
        parameters["entry"] = entry
    _start("recover-cluster-state/default", parameters, wait)


def verify_backups(
    environment: Annotated[str | None, typer.Argument(help="Only this environment.")] = None,
    wait: Wait = False,
) -> None:
    """Run the restore drill of every cluster's backups now (verify-backups/default)."""
    parameters = {} if environment is None else {"environment": environment}
    _start("verify-backups/default", parameters, wait)


def register(app: typer.Typer) -> None:
    """Add these commands to the `cluster-mgmt` app."""
    app.command()(recover)
    app.command(name="verify-backups")(verify_backups)
