"""Monitor sweep: monitor-clusters over a lab fleet, against the naive one-task-per-cluster flow.

A lab fleet (`python -m lab.fleet`, its own process) serves N lab API servers on 127.1.x.y:6443
with a share of faults spread over every kind (API down, hanging, wrong CA, 401, etcd
unhealthy, node NotReady, pod crash-looping, certificate expiring, expired). Each sweep runs in
a fresh process against a real Prefect server on loopback and reports wall time, CPU time, peak
RSS, task runs written and misclassified clusters (health.json vs the fleet's expected verdict).

    .venv/bin/python benchmarks/monitor_sweep.py [--sizes 100 1000] [--faults 0.1]
    .venv/bin/python benchmarks/monitor_sweep.py --sizes 10000 --shards 4 --postgres \
        --base-address 127.4.2.1

Fleets are kept under --workdir (default .lab/fleets) and reused. Goals: 1,000 clusters in
<= 5 s wall, >= 10x faster than naive, 100 -> 1,000 costs <= 12x, <= 300 MB RSS.

With `--shards N` each sweep is N shard runs (`monitor_clusters(shards=N, shard=i, sweep=...)`,
what a worker of the pool runs for one shard), one after the other in one process as if each
had a machine of its own, and each shard's wall time is reported (goal: <= 60 s for a shard of
2,500). `--postgres` puts the Prefect server on a throw-away PostgreSQL (lab.postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _naive_flow():
    """The design we avoid: one Prefect task run per cluster."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from blocks import ClusterStateVolume
    from cluster_mgmt.health import HealthSettings, run_sweep

    @task(name="probe-one-cluster", cache_policy=NO_CACHE)
    def probe_one(cluster, settings):
        return run_sweep([cluster], settings)[0].row()

    @flow(name="monitor-clusters-naive")
    def naive(state_volume: str, probe_timeout_seconds: float, concurrency: int):
        volume = ClusterStateVolume.load(state_volume).volume()
        settings = HealthSettings(
            probe_timeout=probe_timeout_seconds, sweeps_to_change=1, concurrency=concurrency
        )
        futures = probe_one.map(volume.clusters(), settings)
        return [f.result() for f in futures]

    return naive


def _sweep(design: str, block: str, timeout: float, concurrency: int, **shard):
    from flows.monitor import monitor_clusters

    wall, cpu = time.perf_counter(), time.process_time()
    if design == "naive":
        state = _naive_flow()(block, timeout, concurrency, return_state=True)
    else:
        state = monitor_clusters(
            state_volume=block,
            sweeps_to_change=1,
            probe_timeout_seconds=timeout,
            concurrency=concurrency,
            return_state=True,
            **shard,
        )
    return state, time.perf_counter() - wall, time.process_time() - cpu


def _task_runs(flow_run_id, at_least: int) -> int:
    """Task runs the sweep wrote, read back from the API (they arrive asynchronously)."""
    from prefect.client.orchestration import get_client

    body = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}}
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while True:
            count = client.request("POST", "/task_runs/count", json=body).json()
            if count >= at_least or time.monotonic() > deadline:
                return count
            time.sleep(1)


def _misclassified(volume, expected: dict) -> list:
    from cluster_mgmt.health import read_health

    wrong = []
    for name, entry in expected.items():
        record = read_health(volume.cluster(entry["environment"], name))
        if record is None or record.verdict != entry["verdict"]:
            wrong.append((name, entry["fault"], record.reasons[:1] if record else None))
    return wrong


def sharded(fleet_dir: Path, block: str, timeout: float, concurrency: int, shards: int) -> list:
    """Child process: each sweep as `shards` shard runs in turn, each measured."""
    import uuid

    from cluster_mgmt.shards import shard_of
    from cluster_mgmt.state import StateVolume

    volume = StateVolume(fleet_dir / "volume")
    for cluster in volume.clusters():
        cluster.path("health.json").unlink(missing_ok=True)
    expected = json.loads((fleet_dir / "expected.json").read_text())
    sizes = [0] * shards
    for entry in expected.values():
        sizes[shard_of(entry["environment"], entry["name"], shards)] += 1
    figures = []
    for run in ("first", "steady"):
        sweep = f"bench-{run}-{uuid.uuid4().hex[:8]}"
        for index in range(shards):
            state, wall, cpu = _sweep(
                "design", block, timeout, concurrency, shards=shards, shard=index, sweep=sweep
            )
            figures.append(
                {
                    "design": f"shard {index + 1}/{shards} ({run} sweep)",
                    "clusters": sizes[index],
                    "state": state.type.value,
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                    "task_runs": _task_runs(state.state_details.flow_run_id, 2),
                    "misclassified": "-",
                    "load_average_1m": round(os.getloadavg()[0], 1),
                }
            )
            print(json.dumps(figures[-1]), file=sys.stderr, flush=True)
        figures[-1]["misclassified"] = len(_misclassified(volume, expected))
    return figures


def one(design: str, fleet_dir: Path, block: str, timeout: float, concurrency: int) -> list:
    """Child process: sweeps, measured; prints their figures as JSON lines.

    The design runs twice from no health.json: the first sweep signals every cluster's first
    verdict (an event and an artifact each), the second is the steady state of every five
    minutes (no transition). The naive flow runs once and signals nothing.
    """
    from cluster_mgmt.state import StateVolume

    volume = StateVolume(fleet_dir / "volume")
    for cluster in volume.clusters():
        cluster.path("health.json").unlink(missing_ok=True)
    expected = json.loads((fleet_dir / "expected.json").read_text())
    runs = ["first", "steady"] if design == "design" else ["naive"]
    figures = []
    for run in runs:
        state, wall, cpu = _sweep(design, block, timeout, concurrency)
        count = _task_runs(
            state.state_details.flow_run_id, 2 if design == "design" else len(expected)
        )
        wrong = _misclassified(volume, expected)
        figures.append(
            {
                "design": design if design == "naive" else f"design ({run} sweep)",
                "clusters": len(expected),
                "state": state.type.value,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "task_runs": count,
                "misclassified": len(wrong),
                "examples": wrong[:3],
                "load_average_1m": round(os.getloadavg()[0], 1),  # other work on the machine
            }
        )
    return figures


def start_fleet(fleet_dir: Path, size: int, faults: float, base: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.fleet",
            "--clusters",
            str(size),
            "--faults",
            str(faults),
            "--base-address",
            base,
            str(fleet_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"lab fleet of {size} did not start: {line!r}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--faults", type=float, default=0.1)
    parser.add_argument("--probe-timeout", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--shards", type=int, default=1, help="sweep as N shards (no naive run)")
    parser.add_argument("--postgres", action="store_true", help="Prefect server on PostgreSQL")
    parser.add_argument("--base-address", default="127.1.0.1", help="the fleet's first address")
    parser.add_argument("--workdir", type=Path, default=REPO / ".lab" / "fleets")
    parser.add_argument("--one", nargs=3, metavar=("DESIGN", "FLEET_DIR", "BLOCK"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.one:
        design, fleet_dir, block = args.one
        if design == "sharded":
            found = sharded(
                Path(fleet_dir), block, args.probe_timeout, args.concurrency, args.shards
            )
        else:
            found = one(design, Path(fleet_dir), block, args.probe_timeout, args.concurrency)
        for figures in found:
            print(json.dumps(figures), flush=True)
        return
    from lab.embedded import EmbeddedServer
    from lab.postgres import LabPostgres, migrated_template

    work = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    auth = f"bench:{secrets.token_hex(8)}"
    database = None
    if args.postgres:
        database = LabPostgres(template=migrated_template(REPO / ".lab")).start()
    server = EmbeddedServer(
        home=work / "prefect",
        auth_string=auth,
        ui=False,
        cache_dir=REPO / ".lab",
        database_url=database.url if database else None,
    )
    env = os.environ | {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_HOME": str(work / "client"),
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    }
    os.environ.update(env)
    results = []
    try:
        with server:
            from blocks import ClusterStateVolume

            for size in args.sizes:
                fleet_dir = args.workdir / f"fleet-{size}-{args.faults}"
                fleet = start_fleet(fleet_dir, size, args.faults, args.base_address)
                try:
                    block = f"bench-{size}"
                    ClusterStateVolume(root=str(fleet_dir / "volume")).save(block, overwrite=True)
                    designs = ["design"] if args.no_naive else ["design", "naive"]
                    if args.shards > 1:
                        designs = ["sharded"]
                    for design in designs:
                        child = subprocess.run(
                            [
                                sys.executable,
                                __file__,
                                "--one",
                                design,
                                str(fleet_dir),
                                block,
                                "--probe-timeout",
                                str(args.probe_timeout),
                                "--concurrency",
                                str(args.concurrency),
                                "--shards",
                                str(args.shards),
                            ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if args.shards == 1 else None,
                            text=True,
                            env=env,
                            check=False,
                        )
                        if child.returncode != 0:
                            raise SystemExit((child.stderr or "")[-3000:] or "the sweep failed")
                        for line in child.stdout.strip().splitlines():
                            if line.startswith("{"):
                                results.append(json.loads(line))
                                print(line, flush=True)
                finally:
                    fleet.terminate()
                    try:
                        fleet.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        fleet.kill()
    finally:
        if database is not None:
            database.stop()
    print()
    print("| design | clusters | wall s | CPU s | peak RSS MB | task runs | misclassified | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['design']} | {r['clusters']} | {r['wall_s']} | {r['cpu_s']} | "
            f"{r['peak_rss_mb']} | {r['task_runs']} | {r['misclassified']} | "
            f"{r['load_average_1m']} |"
        )
    design = {r["clusters"]: r for r in results if r["design"] == "design (steady sweep)"}
    naive = {r["clusters"]: r for r in results if r["design"] == "naive"}
    for size in design:
        if size in naive:
            print(
                f"{size}: naive / design wall = {naive[size]['wall_s'] / design[size]['wall_s']:.1f}x"
            )
    if len(design) >= 2:
        small, large = min(design), max(design)
        print(f"{small} -> {large}: {design[large]['wall_s'] / design[small]['wall_s']:.1f}x wall")


if __name__ == "__main__":
    main()
