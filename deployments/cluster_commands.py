"""CLI commands for a cluster's customer access and managed resources (`register(app)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

# Exit codes as in deployments.client (imported lazily there: it loads Prefect).
FAILED, USAGE, NOT_FOUND = 1, 2, 4

Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the run to its end; exit 1 if it fails.")
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _start(deployment: str, parameters: dict[str, Any], wait: bool) -> None:
    """`deployments.cli.start_run` (imported when called: that module registers these), once
    the cluster's environment and name are checked (exit 2 saying what to fix)."""
    from cluster_mgmt.identity import ClusterId
    from deployments.cli import start_run

    try:
        ClusterId(parameters["environment"], parameters["name"])
    except ValueError as exc:
        raise _fail(str(exc), USAGE) from None
    start_run(deployment, parameters, wait)


def configure(environment: str, name: str, wait: Wait = False) -> None:
    """Configure a cluster for its customer again (configure-cluster/default), without RKE."""
    _start("configure-cluster/default", {"environment": environment, "name": name}, wait)


def apply(
    environment: str,
    name: str,
    file: Annotated[
        Path, typer.Option("-f", "--file", help="YAML manifest (one or more documents).")
    ],
    resource: Annotated[str, typer.Option("--name", help="Name of the managed resource.")],
    wait: Wait = False,
) -> None:
    """Apply a manifest to a cluster as managed resource NAME (apply-managed-resource/default).

    The manifest is checked here first (size, YAML, apiVersion/kind/metadata.name).
    """
    from cluster_mgmt.manifests import ManifestError, check_resource_name, parse_manifest

    try:
        manifest = file.read_text()
        check_resource_name(resource)
        parse_manifest(manifest)
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read {file}: {exc}", USAGE) from None
    except ManifestError as exc:
        raise _fail(f"{file}: {exc}", USAGE) from None
    parameters = {
        "environment": environment,
        "name": name,
        "resource_name": resource,
        "manifest": manifest,
    }
    _start("apply-managed-resource/default", parameters, wait)


def resources(environment: str, name: str) -> None:
    """List a cluster's managed resources (from its status artifact)."""
    from deployments.client import ServiceError, cluster_artifacts

    try:
        found = cluster_artifacts(environment, name)
    except ServiceError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    if not found:
        raise _fail(
            f"unknown cluster {environment}/{name}; `cluster-mgmt list` shows them", NOT_FOUND
        )
    for resource in filter(None, (found[0].metadata_ or {}).get("resources", "").split(",")):
        typer.echo(resource)


def delete_resource(
    environment: str,
    name: str,
    resource: Annotated[str, typer.Argument(help="Name of the managed resource.")],
    wait: Wait = False,
) -> None:
    """Delete a managed resource's objects, then its record (delete-managed-resource/default)."""
    from cluster_mgmt.manifests import ManifestError, check_resource_name

    try:
        check_resource_name(resource)
    except ManifestError as exc:
        raise _fail(str(exc), USAGE) from None
    parameters = {"environment": environment, "name": name, "resource_name": resource}
    _start("delete-managed-resource/default", parameters, wait)


def rotate_credentials(environment: str, name: str, wait: Wait = False) -> None:
    """Rotate the customer's token (rotate-customer-credentials/default)."""
    _start("rotate-customer-credentials/default", {"environment": environment, "name": name}, wait)


def register(app: typer.Typer) -> None:
    """Add these commands to the `cluster-mgmt` app."""
    app.command()(configure)
    app.command()(apply)
    app.command()(resources)
    app.command(name="delete-resource")(delete_resource)
    app.command(name="rotate-credentials")(rotate_credentials)
