"""Task: an EBS snapshot of the state volume, and its artifact."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cluster_mgmt.backup import SnapshotReport, Target, VolumeContents, snapshot_volume


@task(name="snapshot-state-volume", cache_policy=NO_CACHE)
def take_snapshot(
    ec2: Any, target: Target, contents: VolumeContents, retain: int
) -> SnapshotReport:
    """Snapshot the state volume, wait for it, delete our snapshots beyond `retain`, and
    publish the `state-backup-<volume id>` artifact (one task run: each costs ~0.1 s).

    Args:
        ec2: A boto3 EC2 client (retries and timeouts are its own: no Prefect retries).
        target: The EBS volume and its region.
        contents: The clusters on the volume, for tags and description.
        retain: How many of our completed snapshots of the volume to keep, this one included.

    Returns:
        The snapshot taken and the old ones deleted.
    """
    report = snapshot_volume(ec2, target, contents, retain=retain)
    publish_backup(report)
    return report


def publish_backup(report: SnapshotReport) -> None:
    """Artifact `state-backup-<volume id>`: the snapshot's id, time, size, tags, deletions."""
    lines = [
        f"# State volume backup {report.snapshot_id}",
        f"- **volume**: {report.volume_id} ({report.region})",
        f"- **started**: {report.started_at}",
        f"- **size**: {report.volume_size_gib} GiB, encrypted: {str(report.encrypted).lower()}",
        f"- **description**: {report.description}",
        "",
        "## Tags",
        *(f"- `{key}`: {value}" for key, value in report.tags.items()),
        "",
        "## Deleted old snapshots",
        *([f"- {snapshot}" for snapshot in report.deleted] or ["- none"]),
    ]
    create_markdown_artifact(
        key=f"state-backup-{report.volume_id}",
        markdown="\n".join(lines),
        description=f"{report.snapshot_id} of {report.volume_id} at {report.started_at}",
    )
