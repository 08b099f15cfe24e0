"""`cluster-mgmt`: the operator's command line, speaking to the Prefect API.

Exit codes: 0 done, 1 the flow run failed, 2 bad input, 3 trouble with the Prefect API
(unreachable, token refused, an error status, a timeout), 4 unknown cluster or deployment,
5 a cluster's state on the volume is damaged. The embedded server and the lab are
`cluster-mgmt-lab`'s (in the `lab` package, which this module never imports).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from cluster_mgmt.identity import ClusterId, status_key_prefix
from cluster_mgmt.preflight import HostKeyPolicy
from deployments.backup_commands import register as register_backup_commands
from deployments.cluster_commands import register as register_cluster_commands
from deployments.etcd_commands import register as register_etcd_commands
from deployments.recover_commands import register as register_recover_commands
from deployments.update_commands import register as register_update_commands

if TYPE_CHECKING:
    from cluster_mgmt.spec import ClusterSpec

app = typer.Typer(
    help=(
        "Cluster Management Service: RKE clusters provisioned, configured, watched and torn "
        "down by Prefect flows. Talks to the Prefect API named by PREFECT_API_URL with the "
        "shared token in PREFECT_API_AUTH_STRING.\n\nExit codes: 0 done, 1 the flow run "
        "failed, 2 bad input, 3 trouble with the Prefect API (unreachable, token refused, an "
        "error status, a timeout), 4 unknown cluster or deployment, 5 a cluster's state on "
        "the volume is damaged."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the run to its end; exit 1 if it fails.")
]


def _fail(message: str, code: int) -> typer.Exit:
    one_line = " ".join(line.strip() for line in message.splitlines())
    typer.echo(f"error: {one_line}", err=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn ServiceErrors into one line on stderr and their exit code."""
    from deployments.client import ServiceError

    try:
        yield
    except ServiceError as exc:
        raise _fail(str(exc), exc.exit_code) from None


def start_run(deployment: str, parameters: dict[str, Any], wait: bool) -> None:
    """Start a run of `deployment` and print it; with `wait`, follow it and exit with its
    outcome."""
    from deployments.client import FAILED, follow, run_url, trigger

    with _errors():
        run = trigger(deployment, parameters)
        typer.echo(f"flow run {run.id} ({run.name}) started: {run_url(run.id)}")
        if not wait:
            return
        started = time.monotonic()

        def show(current) -> None:
            elapsed = time.monotonic() - started
            typer.echo(f"[{elapsed:6.1f}s] {current.state.name}", err=True)

        final = follow(run.id, show, lambda line: typer.echo(f"    {line}", err=True))
    typer.echo(f"{final.state.name}: {final.state.message or ''}")
    if not final.state.is_completed():
        raise typer.Exit(FAILED)


@app.command()
def create(
    spec: Annotated[Path, typer.Option(help="ClusterSpec file (YAML or JSON).", exists=True)],
    wait: Wait = False,
) -> None:
    """Provision a cluster: start provision-cluster/default and return its flow run at once."""
    request = read_spec(spec)
    start_run("provision-cluster/default", {"spec": request.model_dump(mode="json")}, wait)


def read_spec(path: Path) -> ClusterSpec:
    """The ClusterSpec in `path`, or exit 2 saying what is wrong with it."""
    from pydantic import ValidationError

    from cluster_mgmt.spec import ClusterSpec
    from deployments.client import USAGE

    try:
        return ClusterSpec.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise _fail(f"{path} does not parse as YAML/JSON: {exc}", USAGE) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise _fail(f"{path}: {problems}", USAGE) from None


@app.command()
def delete(environment: str, name: str, wait: Wait = False) -> None:
    """Tear a cluster down: start teardown-cluster/default and return its flow run at once."""
    from deployments.client import NOT_FOUND, cluster_artifacts

    with _errors():
        if not cluster_artifacts(environment, name):
            raise _fail(
                f"unknown cluster {environment}/{name}; `cluster-mgmt list` shows them", NOT_FOUND
            )
    start_run("teardown-cluster/default", {"environment": environment, "name": name}, wait)


@app.command()
def status(
    environment: Annotated[
        str | None, typer.Argument(help="Environment (omit to list all).")
    ] = None,
    name: Annotated[str | None, typer.Argument(help="Cluster name.")] = None,
) -> None:
    """Show a cluster's status: its `cluster-<env>-<name>` artifact, and its status.json when
    the state volume is mounted here. Without arguments, list the live clusters."""
    from deployments.client import NOT_FOUND, USAGE, cluster_artifacts, local_status

    if environment is None:
        list_clusters(None, show_all=False)
        return
    if name is None:
        raise _fail("give both ENVIRONMENT and NAME, or neither", USAGE)
    with _errors():
        found = cluster_artifacts(environment, name)
        on_volume = local_status(environment, name)
    if not found and on_volume is None:
        raise _fail(
            f"unknown cluster {environment}/{name}; `cluster-mgmt list` shows them", NOT_FOUND
        )
    if found:
        typer.echo(found[0].data)
    if on_volume is not None:
        typer.echo(f"\nstatus.json: {on_volume.to_json()}")


@app.command(name="list")
def list_clusters(
    environment: Annotated[str | None, typer.Option(help="Only this environment.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also clusters that were torn down (DELETED).")
    ] = False,
) -> None:
    """List live clusters with their phase (`--all`: deleted ones too)."""
    from deployments.client import cluster_artifacts, phase_of

    with _errors():
        found = cluster_artifacts(environment)
    for artifact in found:
        if show_all or phase_of(artifact) != "DELETED":
            label = artifact.key.removeprefix(status_key_prefix())
            typer.echo(f"{label:40}  {artifact.description or ''}")


@app.command()
def kubeconfig(environment: str, name: str) -> None:
    """Print the customer kubeconfig of a cluster (Secret block kubeconfig-<env>-<name>)."""
    from deployments.client import NOT_FOUND, USAGE, secret_block_value

    try:
        block = ClusterId(environment, name).kubeconfig_block
    except ValueError as exc:
        raise _fail(str(exc), USAGE) from None
    with _errors():
        value = secret_block_value(block)
    if value is None:
        raise _fail(
            f"no customer kubeconfig for {environment}/{name} (the cluster is unknown or not "
            "configured yet)",
            NOT_FOUND,
        )
    typer.echo(value)


@app.command()
def init(
    state_root: Annotated[
        Path,
        typer.Option(envvar="CLUSTER_MGMT_STATE_ROOT", help="The state volume's mount point."),
    ],
    ebs_volume_id: Annotated[
        str | None, typer.Option(help="The EBS volume mounted there (vol-...), if any.")
    ] = None,
) -> None:
    """Initialise a new state volume: write its marker at the root, once (idempotent).

    Run it on the host where the volume is mounted, before the first cluster. Operations
    refuse a root without the marker (an unmounted mount point is an empty folder) and a
    marker that differs from the cluster-state-volume block, so a missing volume can never
    look like a volume without clusters. Record the printed id as the block's volume_id.
    """
    from cluster_mgmt.state import StateVolume, VolumeError
    from deployments.client import USAGE

    existed = state_root.is_dir()
    try:
        marker = StateVolume(state_root, ebs_volume_id=ebs_volume_id).initialise()
    except (VolumeError, OSError) as exc:
        raise _fail(str(exc), USAGE) from None
    if existed and not os.path.ismount(state_root):
        typer.echo(
            f"note: {state_root} is not a mount point; if a volume should be mounted there, "
            "this initialised the folder underneath it",
            err=True,
        )
    typer.echo(f"state volume {state_root.absolute()}: volume id {marker.volume_id}")


@app.command()
def bootstrap(
    state_root: Annotated[
        str | None, typer.Option(envvar="CLUSTER_MGMT_STATE_ROOT", help="State volume mount point.")
    ] = None,
    ssh_user: Annotated[
        str | None, typer.Option(envvar="CLUSTER_MGMT_SSH_USER", help="Login user on the nodes.")
    ] = None,
    ssh_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="CLUSTER_MGMT_SSH_KEY_FILE",
            help="Private key file for the nodes.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    known_hosts_file: Annotated[
        Path | None,
        typer.Option(
            envvar="CLUSTER_MGMT_KNOWN_HOSTS_FILE",
            help="known_hosts of the nodes.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    host_key_policy: Annotated[
        HostKeyPolicy | None,
        typer.Option(
            envvar="CLUSTER_MGMT_HOST_KEY_POLICY", help="Unknown host keys: reject or accept-new."
        ),
    ] = None,
    rke_binary: Annotated[
        str | None, typer.Option(envvar="CLUSTER_MGMT_RKE_BINARY", help="rke executable.")
    ] = None,
    pool: Annotated[str, typer.Option(help="Work pool to create and deploy to.")] = "cluster-mgmt",
    pool_type: Annotated[str, typer.Option(help="process, docker or kubernetes.")] = "process",
    init_volume: Annotated[
        bool,
        typer.Option(
            help="Also initialise --state-root as a new state volume (the volume is mounted "
            "on this host) and record its id in the cluster-state-volume block."
        ),
    ] = False,
    notification_block: Annotated[
        str | None,
        typer.Option(
            envvar="CLUSTER_MGMT_NOTIFICATION_BLOCK",
            help="Notification block (<type-slug>/<name>, e.g. custom-webhook/ops) that the "
            "health alert automation sends through; without one no automation is applied.",
        ),
    ] = None,
    snapshot_schedule: Annotated[
        list[str] | None,
        typer.Option(
            help="ENV=CRON (UTC), repeatable: snapshot-etcd takes a snapshot of every READY "
            "cluster of ENV on that schedule, e.g. --snapshot-schedule 'prod=0 2 * * *'. "
            "Given, they replace the deployment's schedules; a bootstrap without this "
            "option keeps the schedules it has (also those added in the UI).",
        ),
    ] = None,
) -> None:
    """Register block types, default blocks, the work pool and the deployments (idempotent).

    Existing blocks are kept as they are; secrets are read from files and never printed.
    """
    from pydantic import ValidationError

    from cluster_mgmt.preflight import PreflightError
    from deployments.bootstrap import BlockValues
    from deployments.bootstrap import bootstrap as run_bootstrap
    from deployments.client import USAGE, api

    crons: dict[str, str] = {}
    for item in snapshot_schedule or []:
        environment, sep, cron = item.partition("=")
        if not sep or not cron.strip():
            raise _fail(f"--snapshot-schedule {item!r}: give ENV=CRON, e.g. 'prod=0 2 * * *'", 2)
        crons[environment.strip()] = cron.strip()
    values = BlockValues(
        state_root=state_root,
        ssh_user=ssh_user,
        ssh_private_key=ssh_key_file.read_text() if ssh_key_file else None,
        known_hosts=known_hosts_file.read_text() if known_hosts_file else None,
        host_key_policy=host_key_policy.value if host_key_policy else None,
        rke_binary=rke_binary,
        init_volume=init_volume,
    )
    with _errors(), api():
        try:
            report = run_bootstrap(
                values,
                pool_name=pool,
                pool_type=pool_type,
                notification_block=notification_block,
                snapshot_crons=crons,
            )
        except PreflightError as exc:
            raise _fail(f"--ssh-key-file: {exc}", USAGE) from None
        except ValidationError as exc:
            problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
            raise _fail(f"bad block value: {problems}", USAGE) from None
        except ValueError as exc:  # a bad snapshot schedule or notification block
            raise _fail(str(exc), USAGE) from None
    for item in report.created:
        typer.echo(f"created  {item}")
    for item in report.kept:
        typer.echo(f"ok       {item}")


register_cluster_commands(app)
register_recover_commands(app)
register_backup_commands(app)
register_update_commands(app)
register_etcd_commands(app)


def main() -> None:
    app(prog_name="cluster-mgmt")


if __name__ == "__main__":
    sys.exit(main())
