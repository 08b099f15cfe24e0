"""A sharded monitor sweep: one sub-run of the monitor's own deployment per shard.

The parent starts every shard at once (`run_deployment`, linked as a subflow), waits for each
within a bound, and starts a shard again (up to `attempts` times) when its run failed,
crashed (its process was killed) or did not finish in time (it is cancelled first). A shard's
run writes its own fleet table (`fleet-health-shard-<i>-of-<n>`); the parent reads it from the
API, so the shards may run on any worker of the pool.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import arun_deployment
from prefect.states import Cancelled, Cancelling

from cluster_mgmt.shards import ShardedSweep

POLL_SECONDS = 1.0


def shard_table_key(shard: int, shards: int) -> str:
    """The key of one shard's fleet table artifact."""
    return f"fleet-health-shard-{shard}-of-{shards}"


async def _shard_rows(client: PrefectClient, run: FlowRun, key: str) -> list[dict[str, Any]]:
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])
        )
    )
    if not artifacts:
        raise LookupError("its run completed without a fleet table")
    data = artifacts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return [r for r in rows if r.get("name") != "-"]  # an empty shard's placeholder row


async def _stop(client: PrefectClient, run: FlowRun, why: str) -> None:
    """Cancel a run that did not finish in time (a worker kills it if it still runs)."""
    if run.state is None or run.state.is_final():
        return
    state = Cancelled if run.state.type == StateType.SCHEDULED else Cancelling
    await client.set_flow_run_state(run.id, state(message=why), force=True)


async def _one_shard(
    client: PrefectClient,
    deployment: UUID | str,
    parameters: dict[str, Any],
    shard: int,
    attempts: int,
    timeout: float,
) -> list[dict[str, Any]] | str:
    """The rows of one shard, or why it failed after `attempts` runs."""
    shards = parameters["shards"]
    logger = get_run_logger()
    why = "not run"
    for attempt in range(1, attempts + 1):
        run = await arun_deployment(
            deployment,
            parameters={**parameters, "shard": shard},
            flow_run_name=f"shard-{shard}-of-{shards}-try-{attempt}",
            timeout=timeout,
            poll_interval=POLL_SECONDS,
            as_subflow=True,
        )
        state = run.state
        if state is not None and state.is_completed():
            try:
                return await _shard_rows(client, run, shard_table_key(shard, shards))
            except LookupError as exc:
                why = str(exc)
        elif state is None or not state.is_final():
            why = f"its run did not finish within {timeout:g} s"
            await _stop(client, run, why)
        else:
            why = f"its run ended {state.type.value}: {state.message or state.name}"
        logger.warning("Shard %d/%d, attempt %d of %d: %s", shard, shards, attempt, attempts, why)
    return f"{why} (after {attempts} attempts)"


async def sweep_shards(
    deployment: UUID | str,
    parameters: dict[str, Any],
    merged: ShardedSweep,
    attempts: int,
    timeout: float,
) -> ShardedSweep:
    """Run every shard of `merged.assigned` at once and merge what they report into `merged`."""
    async with get_client() as client:
        results = await asyncio.gather(
            *(
                _one_shard(client, deployment, parameters, shard, attempts, timeout)
                for shard in merged.assigned
            )
        )
    for shard, result in zip(merged.assigned, results, strict=True):
        if isinstance(result, str):
            merged.fail(shard, result)
        else:
            merged.add(result)
    return merged


def publish_fleet_table(merged: ShardedSweep, key: str) -> str:
    """The merged fleet table artifact; returns its one-line description."""
    counts = merged.counts()
    text = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) or "no clusters"
    shards = len(merged.assigned)
    failed = "; ".join(f"shard {i} failed: {why}" for i, why in sorted(merged.failed.items()))
    description = f"{sum(counts.values())} clusters in {shards} shards: {text}" + (
        f"; {failed}" if failed else ""
    )
    rows = merged.table()
    create_table_artifact(
        key=key,
        table=rows or [{"environment": "-", "name": "-", "verdict": "no clusters"}],
        description=description,
    )
    return description
