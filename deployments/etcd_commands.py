"""CLI commands for certificates and etcd snapshots (`register(app)`): rotate-certificates,
snapshot, restore. Input is checked here first (exit 2), as the flows check it again."""

from __future__ import annotations

from typing import Annotated, Any

import typer

# Exit codes as in deployments.client (imported lazily there: it loads Prefect).
USAGE = 2

Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the run to its end; exit 1 if it fails.")
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(USAGE)


def _start(deployment: str, parameters: dict[str, Any], wait: bool) -> None:
    """`deployments.cli.start_run` (imported when called: that module registers these)."""
    from deployments.cli import start_run

    start_run(deployment, parameters, wait)


def _snapshot_name(value: str | None) -> str | None:
    from cluster_mgmt.snapshots import SNAPSHOT_NAME

    if value is not None and not SNAPSHOT_NAME.matches(value):
        raise _fail(f"snapshot name {value!r} is not valid: {SNAPSHOT_NAME.fix}")
    return value


def rotate_certificates(
    environment: str,
    name: str,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            help="A service whose certificates are renewed (repeatable); none: all services.",
        ),
    ] = None,
    rotate_ca: Annotated[
        bool, typer.Option("--rotate-ca", help="Replace the CA and every certificate.")
    ] = False,
    confirm: Annotated[
        str | None,
        typer.Option("--confirm", help="With --rotate-ca: the cluster's ENV/NAME, to confirm it."),
    ] = None,
    wait: Wait = False,
) -> None:
    """Renew a cluster's certificates with rke cert rotate (rotate-certificates/default).

    --rotate-ca changes every kubeconfig and restarts every component: it needs
    --confirm ENV/NAME; the customer kubeconfig is re-issued in the same run.
    """
    from cluster_mgmt.certificates import check_ca_confirmation, check_services
    from cluster_mgmt.errors import ClusterMgmtError

    try:
        services = check_services(service or [], rotate_ca)
        check_ca_confirmation(environment, name, rotate_ca, confirm)
    except ClusterMgmtError as exc:
        raise _fail(str(exc)) from None
    parameters: dict[str, Any] = {"environment": environment, "name": name}
    if services:
        parameters["services"] = services
    if rotate_ca:
        parameters |= {"rotate_ca": True, "confirm_rotate_ca": confirm}
    _start("rotate-certificates/default", parameters, wait)


def snapshot(
    environment: str,
    name: Annotated[
        str | None,
        typer.Argument(help="The cluster; omitted: every READY cluster of the environment."),
    ] = None,
    snapshot_name: Annotated[
        str | None,
        typer.Option("--snapshot-name", help="The snapshot's name; default snapshot-<UTC time>."),
    ] = None,
    wait: Wait = False,
) -> None:
    """Take an etcd snapshot of a cluster, or of every READY cluster of ENV (snapshot-etcd)."""
    parameters: dict[str, Any] = {"environment": environment}
    if name is not None:
        parameters["name"] = name
    if _snapshot_name(snapshot_name) is not None:
        parameters["snapshot_name"] = snapshot_name
    _start("snapshot-etcd/default", parameters, wait)


def restore(
    environment: str,
    name: str,
    snapshot_name: Annotated[str, typer.Option("--snapshot-name", help="The snapshot to restore.")],
    unrecorded: Annotated[
        bool,
        typer.Option(
            "--unrecorded",
            help="Allow a snapshot the service did not record (one of RKE's recurring ones).",
        ),
    ] = False,
    wait: Wait = False,
) -> None:
    """Restore a cluster's etcd from a snapshot, then configure it again (restore-etcd)."""
    parameters: dict[str, Any] = {
        "environment": environment,
        "name": name,
        "snapshot_name": _snapshot_name(snapshot_name),
    }
    if unrecorded:
        parameters["require_recorded"] = False
    _start("restore-etcd/default", parameters, wait)


def register(app: typer.Typer) -> None:
    """Add these commands to the `cluster-mgmt` app."""
    app.command(name="rotate-certificates")(rotate_certificates)
    app.command()(snapshot)
    app.command()(restore)
