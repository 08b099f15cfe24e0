"""Health sweeps as Prefect tasks: two task runs per sweep, whatever the fleet size.

Probing happens concurrently inside `sweep-cluster-health` (one task run for every cluster);
`publish-cluster-health` then emits one event per verdict transition, refreshes the per-cluster
artifact of the clusters whose verdict changed (only those: an artifact version per cluster per
sweep would be a thousand API writes every five minutes) and writes the `fleet-health` table.
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cluster_mgmt.health import HealthSettings, Outcome, Transition, run_sweep
from cluster_mgmt.redact import redact
from cluster_mgmt.shards import shard_of
from cluster_mgmt.state import ClusterNotFoundError, StateVolume
from tasks.reporting import emit_event_for, update_cluster_artifact

FLEET_ARTIFACT = "fleet-health"
PROGRESS_ARTIFACT = "fleet-health-progress"
ANNOUNCERS = 8  # transitions signalled at once


class _Progress:
    """Advances a progress artifact at most once a second (and at the end), from its own
    thread: the sweep never waits for the API."""

    def __init__(self, artifact_id: UUID) -> None:
        self.artifact_id = artifact_id
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 1.0:
            return
        self.last = now
        context = contextvars.copy_context()
        self.pool.submit(context.run, self._update, done, total)

    def _update(self, done: int, total: int) -> None:
        try:
            update_progress_artifact(
                self.artifact_id, 100.0 * done / max(total, 1), description=f"{done}/{total}"
            )
        except Exception as exc:  # noqa: BLE001 - progress is a courtesy, never a failure
            get_run_logger().warning("progress artifact not updated: %s", exc)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@task(name="sweep-cluster-health", cache_policy=NO_CACHE)
def sweep_cluster_health(
    volume: StateVolume,
    environment: str | None,
    settings: HealthSettings,
    progress_artifact_id: UUID | None = None,
    shard: tuple[int, int] | None = None,
    sweep_id: str | None = None,
) -> list[Outcome]:
    """Probe every cluster on the volume (of `environment`, if given) and update health.json.

    Args:
        volume: The state volume.
        environment: Only this environment's clusters; None for all.
        settings: Timeouts, concurrency, expiry warning and damping.
        progress_artifact_id: A progress artifact to advance as clusters are done.
        shard: `(index, shards)`: only the clusters of this shard.
        sweep_id: The sharded sweep this is part of (clusters it recorded already are skipped).

    Returns:
        One outcome per cluster (observation, health record, transition).
    """
    clusters = volume.clusters(environment)
    if shard is not None:
        index, shards = shard
        clusters = [c for c in clusters if shard_of(c.environment, c.name, shards) == index]
    get_run_logger().info("Probing %d clusters (%d at once)", len(clusters), settings.concurrency)
    progress = _Progress(progress_artifact_id) if progress_artifact_id else None
    try:
        return run_sweep(clusters, settings, progress, sweep_id)
    finally:
        if progress is not None:
            progress.close()


def _health_detail(transition: Transition) -> str:
    lines = [
        "## Health",
        f"- **verdict**: {transition.verdict} since {transition.since}",
        f"- **before**: {transition.previous or 'none'}",
    ]
    lines += [f"- {reason}" for reason in transition.reasons]
    return "\n".join(lines)


def announce(volume: StateVolume, transition: Transition) -> None:
    """The signals of one transition: its event and a new version of the cluster's artifact.

    Not a task: called from within one, for every transition of a sweep.
    """
    reasons = [redact(r) for r in transition.reasons]
    emit_event_for(
        transition.environment,
        transition.name,
        transition.event,
        {
            "verdict": transition.verdict,
            "previous": transition.previous,
            "since": transition.since,
            "reasons": reasons,
        },
    )
    cluster = volume.cluster(transition.environment, transition.name)
    if cluster.dir.is_dir():
        try:
            update_cluster_artifact.fn(cluster, detail=_health_detail(transition))
        except ClusterNotFoundError:
            pass  # torn down meanwhile


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    """How many clusters got each verdict (and how many were not judged or went away)."""
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        if outcome.gone:
            counts["gone"] += 1
        elif outcome.record is None or outcome.observation.verdict is None:
            counts["not judged"] += 1
        else:
            counts[outcome.record.verdict] += 1
    return dict(counts)


@task(name="publish-cluster-health", cache_policy=NO_CACHE)
def publish_cluster_health(
    volume: StateVolume, outcomes: list[Outcome], table_key: str = FLEET_ARTIFACT
) -> dict[str, Any]:
    """Events and artifacts for transitions, and the fleet table artifact (`table_key`;
    a shard of a sharded sweep writes its own, which the sweep's parent merges).

    Returns:
        Counts of verdicts and the number of transitions.
    """
    now = datetime.now(UTC)
    transitions = [o.transition for o in outcomes if o.transition is not None]
    with ThreadPoolExecutor(max_workers=ANNOUNCERS) as pool:  # many at once on a first sweep
        calls = [
            pool.submit(contextvars.copy_context().run, announce, volume, t) for t in transitions
        ]
        for call in calls:
            call.result()
    counts = summary(outcomes)
    rows = [{k: redact(str(v)) for k, v in o.row(now).items()} for o in outcomes]
    text = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) or "no clusters"
    create_table_artifact(
        key=table_key,
        table=rows or [{"environment": "-", "name": "-", "verdict": "no clusters"}],
        description=f"{len(outcomes)} clusters: {text}; {len(transitions)} transitions",
    )
    get_run_logger().info("Fleet health: %s; %d transitions", text, len(transitions))
    return {**counts, "transitions": len(transitions)}


@task(name="check-cluster-health", cache_policy=NO_CACHE)
def check_cluster_health(
    volume: StateVolume, environment: str, name: str, settings: HealthSettings | None = None
) -> dict[str, Any]:
    """Probe one cluster now, update its health.json and signal a transition (e.g. at the end
    of a provision: a new cluster's first verdict is taken at once).

    Args:
        volume: The state volume.
        environment: The cluster's environment.
        name: The cluster's name.
        settings: Timeouts and damping; the defaults otherwise.

    Returns:
        Its fleet-table row: phase, verdict, since, reasons, version, nodes, certificate days.
    """
    outcome = run_sweep([volume.cluster(environment, name)], settings or HealthSettings())[0]
    if outcome.transition is not None:
        announce(volume, outcome.transition)
    return {k: redact(str(v)) for k, v in outcome.row().items()}
