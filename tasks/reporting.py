"""What clients of the Prefect API see of a cluster: its artifact, its events, its decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.events import emit_event
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.utilities.context import get_task_and_flow_run_ids

from cluster_mgmt.identity import ClusterId
from cluster_mgmt.phases import Phase
from cluster_mgmt.policy import Decision
from cluster_mgmt.redact import redact
from cluster_mgmt.snapshots import read_snapshots
from cluster_mgmt.state import ClusterState

FINGERPRINT_CHARS = 12
SNAPSHOTS_SHOWN = 20
WITNESS_LOOKBACK = timedelta(days=366)  # beyond any event retention the server keeps


def resource(environment: str, name: str) -> dict[str, str]:
    """The event resource of one cluster."""
    return ClusterId(environment, name).event_resource


def emit_event_for(environment: str, name: str, event: str, payload: dict[str, Any]) -> None:
    """Emit `event` (e.g. `cluster.provisioned`) on the cluster's resource."""
    clean = {k: redact(v) if isinstance(v, str) else v for k, v in payload.items()}
    emit_event(event=event, resource=resource(environment, name), payload=clean)


def emit_cluster_event(cluster: ClusterState, event: str, payload: dict[str, Any]) -> None:
    """Emit `event` on the resource of `cluster`."""
    emit_event_for(cluster.environment, cluster.name, event, payload)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows (dicts with the same keys) as a markdown table; "" for no rows."""
    if not rows:
        return ""
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def _short(fingerprint: str) -> str:
    """`SHA256:abcdefghijkl…` — enough to compare by eye; the full one is listed below."""
    kind, _, digest = fingerprint.partition(":")
    if not digest or len(digest) <= FINGERPRINT_CHARS:
        return fingerprint
    return f"{kind}:{digest[:FINGERPRINT_CHARS]}…"


def _nodes_section(nodes: list[dict[str, Any]]) -> list[str]:
    rows = [{**n, "host_key": _short(str(n.get("host_key", "")))} for n in nodes]
    keys = [f"- `{n['node']}`: {n['host_key']}" for n in nodes if n.get("host_key")]
    return ["", "## Nodes", markdown_table(rows), *(["", "Host keys:", *keys] if keys else [])]


def one_line_status(cluster: ClusterState) -> str:
    """`PHASE: message` of the cluster, the artifact's description."""
    status = cluster.read_status()
    return redact(f"{status.phase}: {status.message}") if status else "no status yet"


@task(name="publish-cluster-status", cache_policy=NO_CACHE)
def update_cluster_artifact(
    cluster: ClusterState, *, nodes: list[dict[str, Any]] | None = None, detail: str = ""
) -> None:
    """Publish the cluster's status as a new version of artifact `cluster-<env>-<name>`.

    Its description is the one-line status, so lists show the latest state; its metadata
    records the phase and whether RKE wrote state (the API's witness of a live cluster).
    """
    status = cluster.read_status()
    health = cluster.read_text("health.json")
    operation = (
        f"{status.operation} (flow run {status.flow_run_id}, {status.updated_at})"
        if status
        else "-"
    )
    parts = [
        f"# Cluster {cluster.environment}/{cluster.name}",
        f"- **phase**: {status.phase if status else 'unknown'}",
        f"- **last operation**: {operation}",
        f"- **message**: {status.message if status else '-'}",
        f"- **health**: {'see health.json' if health else 'not yet checked'}",
    ]
    if nodes:
        parts += _nodes_section(nodes)
    if detail:
        parts += ["", detail]
    resources = cluster.resource_names()
    if resources:
        parts += ["", "## Managed resources", *(f"- `{r}`" for r in resources)]
    snapshots = read_snapshots(cluster)[-SNAPSHOTS_SHOWN:]
    if snapshots:
        rows = [s.row() for s in reversed(snapshots)]
        parts += ["", "## Etcd snapshots (newest first)", markdown_table(rows)]
    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    metadata = {
        "phase": str(status.phase) if status else "",
        "rke_state_written": str(bool(status and status.rke_state_written)).lower(),
        "resources": ",".join(resources),
    }
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                key=cluster.id.artifact_key,
                type="markdown",
                data=redact("\n".join(parts)),
                description=one_line_status(cluster),
                metadata_=metadata,
                task_run_id=task_run_id,
                flow_run_id=flow_run_id,
            )
        )


def api_witness(environment: str, name: str) -> str | None:
    """Why the Prefect API believes the cluster is live (RKE wrote state for it and it was not
    torn down), or None: an independent witness when its state directory is missing or empty.

    Two records speak: the latest `cluster-<env>-<name>` artifact and the newest
    `cluster.provisioned` or `cluster.deleted` event on the cluster's resource. The newer
    record that says something decides: an artifact saying RKE wrote state, or a
    `cluster.provisioned` event, says live; an artifact in phase DELETED, or a
    `cluster.deleted` event, says gone. An artifact saying neither (a run that found no state
    and failed) clears nothing, so a cluster stays known by its event whatever such runs
    wrote since.
    """
    cluster = ClusterId(environment, name)
    with get_client(sync_client=True) as client:
        artifacts = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=[cluster.artifact_key])
            ),
            limit=1,
        )
        events = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=datetime.now(UTC) - WITNESS_LOOKBACK),
                event=EventNameFilter(name=["cluster.provisioned", "cluster.deleted"]),
                resource=EventResourceFilter(id=[cluster.event_resource_id]),
            ),
            limit=1,  # the newest
        ).events
    said = []  # (when, live, why)
    if artifacts:
        latest, key = artifacts[0], cluster.artifact_key
        metadata = latest.metadata_ or {}
        when = latest.updated or latest.created
        if metadata.get("phase") == Phase.DELETED:
            said.append((when, False, ""))
        elif metadata.get("rke_state_written") == "true":
            why = f"the Prefect API's artifact {key} says RKE wrote state for it"
            said.append((when, True, f"{why} ({latest.description})"))
    if events:
        event = events[0]
        why = (
            f"the Prefect API's event cluster.provisioned of {event.occurred.isoformat()} "
            f"(id {event.id}) on {cluster.event_resource_id} says it reached READY"
        )
        said.append((event.occurred, event.event == "cluster.provisioned", why))
    if not said:
        return None
    _, live, why = max(said, key=lambda record: record[0])
    return why if live else None


@task(name="publish-policy-decision", cache_policy=NO_CACHE)
def publish_decision(environment: str, name: str, decision: Decision) -> None:
    """The policy decision as table artifact `policy-<env>-<name>` (one row per violation)."""
    rows = [v.to_dict() for v in decision.violations] or [
        {"rule": "-", "message": "no violations", "severity": "-"}
    ]
    create_table_artifact(
        key=ClusterId(environment, name).policy_artifact_key,
        table=[{k: redact(str(v)) for k, v in row.items()} for row in rows],
        description=redact(f"Policy decision for {environment}/{name}: {decision.summary()}"),
    )


@task(name="publish-update-plan", cache_policy=NO_CACHE)
def publish_plan(environment: str, name: str, markdown: str, summary: str) -> None:
    """An update plan as markdown artifact `plan-<env>-<name>`, its summary the description."""
    create_markdown_artifact(
        key=ClusterId(environment, name).plan_artifact_key,
        markdown=redact(markdown),
        description=redact(summary),
    )
