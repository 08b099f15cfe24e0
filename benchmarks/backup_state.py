"""backup-state overhead: wall time of the flow minus the time spent in EC2 calls.

Runs against a real Prefect server on loopback and moto's EC2 server (IAM authentication on),
with an encrypted volume and a state volume holding `--clusters` clusters. The EC2 part (read
the volume, create the snapshot, wait, list and delete old snapshots) is timed around the
domain's `snapshot_volume`; the rest is the flow's own cost: block loads, checks, the
volume's marker, sync, listing the clusters, task runs and the artifact. For scale, an empty
flow with one empty task (as many as backup-state runs) is timed too (Prefect's own cost on this machine). Flows run
in-process, so the EC2 client is made once (a process worker pays ~0.5 s per run for it).

    .venv/bin/python benchmarks/backup_state.py [--runs 10] [--clusters 200]

Goal: overhead <= 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench_server import bench_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="backups to time (default 10)")
    parser.add_argument("--clusters", type=int, default=200, help="clusters on the volume")
    args = parser.parse_args()
    server, work = bench_server("bench-backup-")
    from lab.aws import MotoServer

    with server, MotoServer() as moto:
        overheads, inside = _measure(moto, work, args.runs, args.clusters)
        baseline = _baseline(args.runs)
    print(
        f"backup-state overhead over {len(overheads)} runs (s): min {min(overheads):.2f}  "
        f"median {statistics.median(overheads):.2f}  max {max(overheads):.2f}; "
        f"EC2 calls median {statistics.median(inside):.2f} s; an empty flow with one empty "
        f"task: median {statistics.median(baseline):.2f} s"
    )


def _baseline(runs: int) -> list[float]:
    """Prefect's own cost on this machine: a flow with one task that does nothing."""
    from prefect import flow, task

    @task
    def nothing() -> None:
        pass

    @flow
    def empty() -> None:
        nothing()

    empty()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        empty()
        times.append(time.perf_counter() - started)
    return times


def _measure(moto, work: Path, runs: int, clusters: int) -> tuple[list[float], list[float]]:
    from pydantic import SecretStr

    import tasks.ebs
    from blocks import AwsCredentials, ClusterStateVolume
    from cluster_mgmt.phases import Operation, Phase
    from cluster_mgmt.state import StateVolume
    from flows.backup import backup_state
    from lab.aws import REGION

    ec2 = moto.client()
    volume_id = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=20, Encrypted=True)[
        "VolumeId"
    ]
    state = StateVolume(work / "state", ebs_volume_id=volume_id)
    state.initialise()
    for i in range(clusters):
        cluster = state.cluster(f"env{i % 5}", f"cluster-{i:04d}")
        cluster.create()
        cluster.write_status(Phase.READY, Operation.PROVISION, "bench", "")
    ClusterStateVolume(root=str(state.root), ebs_volume_id=volume_id, aws_region=REGION).save(
        "default", overwrite=True
    )
    AwsCredentials(
        aws_access_key_id=moto.access_key_id,
        aws_secret_access_key=SecretStr(moto.secret_access_key),
        endpoint_url=moto.url,
    ).save("default", overwrite=True)

    spent: list[float] = []
    snapshot_volume = tasks.ebs.snapshot_volume

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return snapshot_volume(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    tasks.ebs.snapshot_volume = timed
    backup_state(retain=3)  # warm-up: imports, block schemas, first client
    overheads, inside = [], []
    for i in range(runs):
        spent.clear()
        started = time.perf_counter()
        state_ = backup_state(retain=3, return_state=True)
        total = time.perf_counter() - started
        if not state_.is_completed():
            raise SystemExit(f"run {i + 1} failed: {state_.message}")
        overheads.append(total - spent[0])
        inside.append(spent[0])
        print(
            f"run {i + 1}: total {total:.2f} s, EC2 calls {spent[0]:.2f} s, "
            f"overhead {total - spent[0]:.2f} s"
        )
    return overheads, inside


if __name__ == "__main__":
    main()
