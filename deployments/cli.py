"""`cluster-mgmt`: the operator's command line, speaking to the Prefect API.

Exit codes: 0 done, 1 the flow run failed, 2 bad input, 3 Prefect API unreachable or token
refused, 4 unknown cluster or deployment.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from cluster_mgmt.preflight import HostKeyPolicy
from deployments.cluster_commands import register as register_cluster_commands

app = typer.Typer(
    help=(
        "Cluster Management Service: RKE clusters provisioned, configured, watched and torn "
        "down by Prefect flows. Talks to the Prefect API named by PREFECT_API_URL with the "
        "shared token in PREFECT_API_AUTH_STRING.\n\nExit codes: 0 done, 1 the flow run "
        "failed, 2 bad input, 3 API unreachable or token refused, 4 unknown cluster or "
        "deployment."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the run to its end; exit 1 if it fails.")
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn ServiceErrors into one line on stderr and their exit code."""
    from deployments.client import ServiceError

    try:
        yield
    except ServiceError as exc:
        raise _fail(str(exc), exc.exit_code) from None


def _start(deployment: str, parameters: dict[str, Any], wait: bool) -> None:
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
    from pydantic import ValidationError

    from cluster_mgmt.spec import ClusterSpec
    from deployments.client import USAGE

    try:
        request = ClusterSpec.model_validate(yaml.safe_load(spec.read_text()))
    except yaml.YAMLError as exc:
        raise _fail(f"{spec} does not parse as YAML/JSON: {exc}", USAGE) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise _fail(f"{spec}: {problems}", USAGE) from None
    _start("provision-cluster/default", {"spec": request.model_dump(mode="json")}, wait)


@app.command()
def delete(environment: str, name: str, wait: Wait = False) -> None:
    """Tear a cluster down: start teardown-cluster/default and return its flow run at once."""
    from deployments.client import NOT_FOUND, cluster_artifacts

    with _errors():
        if not cluster_artifacts(environment, name):
            raise _fail(
                f"unknown cluster {environment}/{name}; `cluster-mgmt list` shows them", NOT_FOUND
            )
    _start("teardown-cluster/default", {"environment": environment, "name": name}, wait)


@app.command()
def status(
    environment: Annotated[
        str | None, typer.Argument(help="Environment (omit to list all).")
    ] = None,
    name: Annotated[str | None, typer.Argument(help="Cluster name.")] = None,
) -> None:
    """Show a cluster's status: its `cluster-<env>-<name>` artifact, and its status.json when
    the state volume is mounted here. Without arguments, list all clusters."""
    from deployments.client import NOT_FOUND, USAGE, cluster_artifacts, local_status

    if environment is None:
        list_clusters(None)
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
) -> None:
    """List known clusters with their phase."""
    from deployments.client import cluster_artifacts

    with _errors():
        found = cluster_artifacts(environment)
    for artifact in found:
        typer.echo(f"{artifact.key.removeprefix('cluster-'):40}  {artifact.description or ''}")


@app.command()
def kubeconfig(environment: str, name: str) -> None:
    """Print the customer kubeconfig of a cluster (Secret block kubeconfig-<env>-<name>)."""
    from deployments.client import NOT_FOUND, secret_block_value

    with _errors():
        value = secret_block_value(f"kubeconfig-{environment}-{name}")
    if value is None:
        raise _fail(
            f"no customer kubeconfig for {environment}/{name} (the cluster is unknown or not "
            "configured yet)",
            NOT_FOUND,
        )
    typer.echo(value)


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
) -> None:
    """Register block types, default blocks, the work pool and the deployments (idempotent).

    Existing blocks are kept as they are; secrets are read from files and never printed.
    """
    from pydantic import ValidationError

    from cluster_mgmt.preflight import PreflightError
    from deployments.bootstrap import BlockValues
    from deployments.bootstrap import bootstrap as run_bootstrap
    from deployments.client import USAGE, api

    values = BlockValues(
        state_root=state_root,
        ssh_user=ssh_user,
        ssh_private_key=ssh_key_file.read_text() if ssh_key_file else None,
        known_hosts=known_hosts_file.read_text() if known_hosts_file else None,
        host_key_policy=host_key_policy.value if host_key_policy else None,
        rke_binary=rke_binary,
    )
    with _errors(), api():
        try:
            report = run_bootstrap(values, pool_name=pool, pool_type=pool_type)
        except PreflightError as exc:
            raise _fail(f"--ssh-key-file: {exc}", USAGE) from None
        except ValidationError as exc:
            problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
            raise _fail(f"bad block value: {problems}", USAGE) from None
    for item in report.created:
        typer.echo(f"created  {item}")
    for item in report.kept:
        typer.echo(f"ok       {item}")


WorkDir = Annotated[Path, typer.Option(help="Folder for the server, worker, lab and state.")]


def _lab_spec(lab: Any, environment: str, name: str) -> dict[str, Any]:
    from cluster_mgmt.spec import expand_hosts

    roles = expand_hosts([n.address for n in lab.nodes])
    nodes = [
        {"address": n.address, "port": n.port, "roles": r.roles}
        for n, r in zip(lab.nodes, roles, strict=True)
    ]
    return {"environment": environment, "name": name, "nodes": nodes}


def _until_interrupted() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping")


@app.command()
def server(
    workdir: WorkDir = Path(".lab/server"),
    nodes: Annotated[int, typer.Option(min=1, max=9, help="Lab nodes to start.")] = 3,
) -> None:
    """Run the embedded service until Ctrl-C: server, worker, lab nodes, bootstrap.

    A ClusterSpec for the lab nodes is written to <workdir>/lab-spec.yaml for `create`.
    """
    from lab.service import embedded_service

    with embedded_service(workdir, nodes, typer.echo) as (_, lab):
        spec_file = workdir.resolve() / "lab-spec.yaml"
        spec_file.write_text(yaml.safe_dump(_lab_spec(lab, "lab", "web"), sort_keys=False))
        typer.echo(f"Lab nodes up; try: cluster-mgmt create --spec {spec_file} --wait")
        _until_interrupted()


@app.command()
def demo(
    workdir: WorkDir = Path(".lab/demo"),
    nodes: Annotated[int, typer.Option(min=1, max=9, help="Lab nodes in the cluster.")] = 3,
    keep: Annotated[bool, typer.Option(help="Keep cluster and server up until Ctrl-C.")] = False,
) -> None:
    """Provision a cluster on lab nodes through the API, then tear it down.

    Starts the embedded default (Prefect server on 127.0.0.1 with SQLite and the shared token,
    a process worker, lab nodes with real sshd, the lab's rke), bootstraps it, triggers
    provision-cluster/default exactly as an outside client would and follows it; then
    teardown-cluster/default. Watch it in the UI at the printed URL (its login asks for the
    token kept in <workdir>/api-auth-string).
    """
    from lab.service import embedded_service

    with embedded_service(workdir, nodes, typer.echo) as (_, lab):
        spec = _lab_spec(lab, "demo", "web")
        typer.echo(f"Provisioning demo/web on {nodes} lab nodes ...")
        _start("provision-cluster/default", {"spec": spec}, wait=True)
        if keep:
            typer.echo("The cluster is up; Ctrl-C tears it down and stops everything.")
            _until_interrupted()
        typer.echo("Tearing demo/web down ...")
        _start("teardown-cluster/default", {"environment": "demo", "name": "web"}, wait=True)


register_cluster_commands(app)


def main() -> None:
    app(prog_name="cluster-mgmt")


if __name__ == "__main__":
    sys.exit(main())
