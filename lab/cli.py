"""`cluster-mgmt-lab`: the embedded default with the lab on one machine (`server`, `demo`).

SIGINT, SIGTERM and SIGHUP (Ctrl-C, `timeout`, systemd, `docker stop`, a closed terminal) stop
every process a command started; a reaper stops them should the command be killed outright.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

app = typer.Typer(
    help=(
        "The Cluster Management Service's embedded default with the lab: a Prefect server on "
        "SQLite on 127.0.0.1 behind the shared token, a process worker, lab nodes (real sshd) "
        "and the lab's rke. Operate it with `cluster-mgmt`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
WorkDir = Annotated[Path, typer.Option(help="Folder for the server, worker, lab and state.")]


def _interrupt(signum: int, _frame: object) -> None:
    """Unwind through every context manager once; later signals wait for that to finish."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _lab_spec(lab: Any, environment: str, name: str) -> dict[str, Any]:
    from cluster_mgmt.spec import expand_hosts

    roles = expand_hosts([n.address for n in lab.nodes])
    nodes = [
        {"address": n.address, "port": n.port, "roles": r.roles}
        for n, r in zip(lab.nodes, roles, strict=True)
    ]
    return {"environment": environment, "name": name, "nodes": nodes}


def _until_stopped() -> None:
    while True:
        time.sleep(3600)


@app.command()
def server(
    workdir: WorkDir = Path(".lab/server"),
    nodes: Annotated[int, typer.Option(min=1, max=9, help="Lab nodes to start.")] = 3,
    first_address: Annotated[
        int, typer.Option(min=2, max=245, help="Lab nodes listen on 127.0.0.<n> from n on.")
    ] = 2,
) -> None:
    """Run the embedded service until stopped: server, worker, lab nodes, bootstrap.

    A ClusterSpec for the lab nodes is written to <workdir>/lab-spec.yaml for `create`.
    """
    from lab.service import embedded_service

    try:
        with embedded_service(workdir, nodes, typer.echo, first_address) as (_, lab):
            spec_file = workdir.resolve() / "lab-spec.yaml"
            spec_file.write_text(yaml.safe_dump(_lab_spec(lab, "lab", "web"), sort_keys=False))
            typer.echo(f"Lab nodes up; try: cluster-mgmt create --spec {spec_file} --wait")
            _until_stopped()
    except KeyboardInterrupt as stop:
        typer.echo(f"stopped ({stop})")


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
    from deployments.cli import start_run
    from lab.service import embedded_service

    try:
        with embedded_service(workdir, nodes, typer.echo) as (_, lab):
            spec = _lab_spec(lab, "demo", "web")
            typer.echo(f"Provisioning demo/web on {nodes} lab nodes ...")
            start_run("provision-cluster/default", {"spec": spec}, wait=True)
            if keep:
                typer.echo("The cluster is up; Ctrl-C tears it down and stops everything.")
                try:
                    _until_stopped()
                except KeyboardInterrupt:
                    for sig in SIGNALS:
                        signal.signal(sig, _interrupt)
            typer.echo("Tearing demo/web down ...")
            start_run("teardown-cluster/default", {"environment": "demo", "name": "web"}, wait=True)
    except KeyboardInterrupt as stop:
        typer.echo(f"stopped ({stop})", err=True)
        raise typer.Exit(130) from None


def main() -> None:
    for sig in SIGNALS:  # also when started with SIGINT ignored (`cmd &` in a script)
        signal.signal(sig, _interrupt)
    app(prog_name="cluster-mgmt-lab")


if __name__ == "__main__":
    main()
