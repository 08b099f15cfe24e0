"""CLI commands that change an existing cluster: `plan` and `update` (`register(app)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deployments.cluster_commands import Wait

SpecFile = Annotated[Path, typer.Option(help="ClusterSpec file (YAML or JSON).", exists=True)]


def _spec(path: Path) -> dict:
    """The spec in `path`, checked here first as `create` does (exit 2 saying what is wrong)."""
    from deployments.cli import read_spec

    return read_spec(path).model_dump(mode="json")


def _start(deployment: str, parameters: dict, wait: bool) -> None:
    from deployments.cli import start_run

    start_run(deployment, parameters, wait)


def plan(spec: SpecFile, wait: Wait = False) -> None:
    """Show what an update to SPEC would change, restart or refuse (plan-cluster/default).

    Read-only; with --wait the plan's summary is printed (the full plan is the artifact
    plan-<env>-<name>).
    """
    _start("plan-cluster/default", {"spec": _spec(spec)}, wait)


def update(spec: SpecFile, wait: Wait = False) -> None:
    """Apply a changed spec to an existing cluster with rke up (update-cluster/default)."""
    _start("update-cluster/default", {"spec": _spec(spec)}, wait)


def register(app: typer.Typer) -> None:
    """Add these commands to the `cluster-mgmt` app."""
    app.command()(plan)
    app.command()(update)
