"""What clients of the Prefect API see of a cluster: its artifact and its events."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from cluster_mgmt.policy import Decision
from cluster_mgmt.redact import redact
from cluster_mgmt.state import ClusterState


def resource(environment: str, name: str) -> dict[str, str]:
    """The event resource of one cluster."""
    return {
        "prefect.resource.id": f"cluster-mgmt.cluster.{environment}.{name}",
        "prefect.resource.name": f"{environment}-{name}",
        "cluster-mgmt.environment": environment,
    }


def emit_event_for(environment: str, name: str, event: str, payload: dict[str, Any]) -> None:
    """Emit `event` (e.g. `cluster.provisioned`) on the cluster's resource."""
    clean = {k: redact(v) if isinstance(v, str) else v for k, v in payload.items()}
    emit_event(event=event, resource=resource(environment, name), payload=clean)


def emit_cluster_event(cluster: ClusterState, event: str, payload: dict[str, Any]) -> None:
    """Emit `event` on the resource of `cluster`."""
    emit_event_for(cluster.environment, cluster.name, event, payload)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def update_cluster_artifact(
    cluster: ClusterState, *, nodes: list[dict[str, Any]] | None = None, detail: str = ""
) -> None:
    """Publish the cluster's status as artifact `cluster-<env>-<name>` (a new version of it)."""
    status = cluster.read_status()
    health = cluster.read_text("health.json")
    if status:
        operation = f"{status.operation} (flow run {status.flow_run_id}, {status.updated_at})"
    parts = [
        f"# Cluster {cluster.environment}/{cluster.name}",
        f"- **phase**: {status.phase if status else 'unknown'}",
        f"- **last operation**: {operation if status else '-'}",
        f"- **message**: {status.message if status else '-'}",
        f"- **health**: {'see health.json' if health else 'not yet checked'}",
    ]
    if nodes:
        parts += ["", "## Nodes", _table(nodes)]
    if detail:
        parts += ["", detail]
    create_markdown_artifact(
        key=f"cluster-{cluster.environment}-{cluster.name}",
        markdown=redact("\n".join(parts)),
        description=redact(f"{status.phase}: {status.message}") if status else "no status yet",
    )


def publish_decision(environment: str, name: str, decision: Decision) -> None:
    """Attach a policy decision to the flow run as a table artifact (one row per violation)."""
    rows = [v.to_dict() for v in decision.violations] or [
        {"rule": "-", "message": "no violations", "severity": "-"}
    ]
    create_table_artifact(
        table=rows,
        description=redact(f"{environment}/{name}: {decision.summary()}"),
    )
