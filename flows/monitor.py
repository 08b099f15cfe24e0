"""monitor-clusters: judge every cluster's health on a schedule (deployment every 5 minutes).

A sweep writes two task runs whatever the fleet size: the probes run concurrently inside
`sweep-cluster-health`, the signals are sent by `publish-cluster-health`. It takes no cluster
lock: a cluster in an operation is reported with its phase and not judged.

Beyond one machine, `shards=N` makes the run a parent that starts N sub-runs of its own
deployment, one per shard of the fleet (a stable hash of `<env>/<name>`), on whichever workers
of the pool take them; it retries a failed shard, merges the shards' tables into `fleet-health`
and fails, naming the clusters not swept, if a shard still failed.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed, State

from blocks import ClusterStateVolume
from blocks.loading import BlockNotFoundError, load_block
from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.health import HealthSettings
from cluster_mgmt.identity import EnvironmentFilter
from cluster_mgmt.patterns import BlockName, RunId
from cluster_mgmt.shards import ShardedSweep, assign, check_shards
from flows.operation import install_redaction
from tasks.health import (
    FLEET_ARTIFACT,
    PROGRESS_ARTIFACT,
    publish_cluster_health,
    sweep_cluster_health,
)
from tasks.shards import publish_fleet_table, shard_table_key, sweep_shards

DEPLOYMENT = "monitor-clusters/default"


@flow(name="monitor-clusters")
def monitor_clusters(
    environment: EnvironmentFilter | None = None,
    state_volume: BlockName = "default",
    sweeps_to_change: int = 2,
    expiry_warning_days: int = 30,
    probe_timeout_seconds: float = 5.0,
    concurrency: int = 200,
    shards: int = 1,
    shard: int | None = None,
    sweep: RunId | None = None,
    shard_attempts: int = 2,
    shard_timeout_seconds: float = 240.0,
) -> State:
    """Probe every cluster (of `environment`, or all), update health.json, signal transitions.

    Args:
        environment: Only this environment's clusters; all when omitted.
        state_volume: Name of the `cluster-state-volume` block.
        sweeps_to_change: Consecutive sweeps that must agree before a verdict changes.
        expiry_warning_days: A certificate ending within this many days makes a cluster Degraded.
        probe_timeout_seconds: Time limit of each request to a cluster's API.
        concurrency: Clusters probed at once.
        shards: Split the fleet into this many shards, each swept by a sub-run of this
            deployment (on any worker of its pool); 1: sweep here.
        shard: Sweep only this shard (0 to shards - 1): set by a sharded sweep's parent.
        sweep: The sharded sweep a shard belongs to: set by the parent.
        shard_attempts: Runs of a shard before it counts as failed (parent only).
        shard_timeout_seconds: Time a shard's run may take before it is cancelled and run
            again (parent only).
    """
    install_redaction()
    try:
        check_shards(shards, shard)
        if shard_attempts < 1 or shard_timeout_seconds <= 0:
            raise ValueError("shard_attempts must be at least 1 and shard_timeout_seconds > 0")
        if sweep is not None and shard is None:
            raise ValueError("sweep is set by a sharded sweep for its shards: leave it empty")
        settings = HealthSettings(
            probe_timeout=probe_timeout_seconds,
            connect_timeout=min(3.0, probe_timeout_seconds),
            concurrency=concurrency,
            expiry_warning_days=expiry_warning_days,
            sweeps_to_change=sweeps_to_change,
        )
        volume = load_block(ClusterStateVolume, state_volume).volume()
        volume.check_usable()
        clusters = volume.clusters(environment)  # an invalid environment fails here
    except (ValueError, ClusterMgmtError, BlockNotFoundError) as exc:
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc))
    if shards > 1 and shard is None:
        parameters = {
            "environment": environment,
            "state_volume": state_volume,
            "sweeps_to_change": sweeps_to_change,
            "expiry_warning_days": expiry_warning_days,
            "probe_timeout_seconds": probe_timeout_seconds,
            "concurrency": concurrency,
            "shards": shards,
        }
        keys = [(c.environment, c.name) for c in clusters]
        return _fan_out(
            parameters, ShardedSweep(assign(keys, shards)), shard_attempts, shard_timeout_seconds
        )
    progress_key, table_key = PROGRESS_ARTIFACT, FLEET_ARTIFACT
    if shard is not None and shards > 1:
        table_key = shard_table_key(shard, shards)
        progress_key = f"{PROGRESS_ARTIFACT}-shard-{shard}-of-{shards}"
    progress = create_progress_artifact(
        0.0, key=progress_key, description=f"0/{len(clusters)} clusters"
    )
    part = (shard, shards) if shards > 1 else None
    outcomes = sweep_cluster_health(volume, environment, settings, progress, part, sweep)
    counts = publish_cluster_health(volume, outcomes, table_key)
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    where = f" of shard {shard} (of {shards})" if part else ""
    return Completed(message=f"{len(outcomes)} clusters{where}: {text}", data=counts)


def _fan_out(parameters: dict, merged: ShardedSweep, attempts: int, timeout: float) -> State:
    """The parent of a sharded sweep: run the shards, merge their tables, fail if any failed."""
    run = FlowRunContext.get().flow_run
    deployment = run.deployment_id or DEPLOYMENT
    parameters = {**parameters, "sweep": str(run.id)}
    asyncio.run(sweep_shards(deployment, parameters, merged, attempts, timeout))
    description = publish_fleet_table(merged, FLEET_ARTIFACT)
    summary = {
        "shards": len(merged.assigned),
        "failed_shards": sorted(merged.failed),
        "not_swept": [f"{env}/{name}" for env, name in merged.not_swept],
        **merged.counts(),
    }
    if merged.not_swept:
        names = ", ".join(summary["not_swept"][:10])
        more = len(merged.not_swept) - 10
        message = f"{description}; not swept: {names}" + (f" and {more} more" if more > 0 else "")
        get_run_logger().error("%s", message)
        return Failed(message=message, data=summary)
    return Completed(message=description, data=summary)
