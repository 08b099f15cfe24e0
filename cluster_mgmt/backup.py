"""EBS snapshots of the state volume: snapshot, tag, wait, keep the newest N of ours.

Plain Python on a boto3 EC2 client, no Prefect. Every AWS failure becomes a BackupError with
one line that says what to fix.

Consistency: the volume cannot be frozen from here, and no cluster lock is taken (a backup
must never make an operation fail as busy). It needs neither: every write on the volume is
a temporary file, fsync, rename, fsync of the directory, so a crash-consistent EBS snapshot
sees each file old or new, exactly as after a kill -9. Before the snapshot the volume's
marker is checked (the right volume is mounted), the page cache is flushed (`sync`), and
the clusters whose status shows an operation in progress are named in the description: their
history copy from before the operation is in the snapshot too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    WaiterError,
)

from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.phases import Phase
from cluster_mgmt.state import StateVolume

OWNER_TAG = "cluster-mgmt:backup"  # marks our snapshots; retention deletes only these
OWNER_VALUE = "state-volume"
TAG_PREFIX = "cluster-mgmt:"
TAG_VALUE_LIMIT = 256  # AWS: tag values up to 256 characters, 50 tags per resource
MAX_CLUSTER_TAGS = 40  # leaves room for ours and a few added by the operator
DESCRIPTION_LIMIT = 255  # AWS: snapshot descriptions up to 255 characters
MAX_ATTEMPTS = 5  # botocore's "standard" retry mode: throttling and transient errors
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
WAIT_DELAY = 15  # seconds between snapshot_completed polls
WAIT_ATTEMPTS = 240  # one hour
IN_PROGRESS = frozenset({Phase.PROVISIONING, Phase.CONFIGURING, Phase.UPDATING, Phase.DELETING})
_VOLUME_ID = re.compile(r"vol-[0-9a-f]{8,17}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_CREDENTIALS = {
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
    "UnrecognizedClientException",
}
_THROTTLED = {"RequestLimitExceeded", "Throttling", "ThrottlingException"}
_UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)


class BackupError(ClusterMgmtError):
    """The backup failed; the message says why and what to do."""


class BackupInputError(BackupError):
    """The backup's settings are wrong: found before any AWS call."""


def client_config(
    max_attempts: int = MAX_ATTEMPTS,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
) -> Config:
    """botocore client settings: at most `max_attempts` tries per call (the first included),
    backoff on throttling and transient errors (standard mode), connect and read timeouts."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


@dataclass(frozen=True)
class Target:
    """The EBS volume to snapshot."""

    volume_id: str
    region: str


def snapshot_target(ebs_volume_id: str | None, aws_region: str | None, block: str) -> Target:
    """The volume named by the cluster-state-volume block `block`; BackupInputError if none."""
    where = f"block cluster-state-volume/{block}"
    if not ebs_volume_id or not aws_region:
        raise BackupInputError(
            f"{where} names no {'ebs_volume_id' if not ebs_volume_id else 'aws_region'}: "
            "set ebs_volume_id and aws_region to the EBS volume mounted at its root to back it up"
        )
    if not _VOLUME_ID.fullmatch(ebs_volume_id):
        raise BackupInputError(f"{where}: ebs_volume_id {ebs_volume_id!r} is not like vol-0abc...")
    if not _REGION.fullmatch(aws_region):
        raise BackupInputError(f"{where}: aws_region {aws_region!r} is not like eu-west-1")
    return Target(ebs_volume_id, aws_region)


@dataclass(frozen=True)
class VolumeContents:
    """What the snapshot holds: every cluster, and those with an operation in progress."""

    clusters: tuple[str, ...]
    in_progress: tuple[str, ...]


def prepare(volume: StateVolume) -> VolumeContents:
    """Check the mounted volume is the expected one, flush it, and list its clusters."""
    volume.check_usable()
    os.sync()
    clusters, busy = [], []
    for cluster in volume.clusters():
        ident = f"{cluster.environment}/{cluster.name}"
        clusters.append(ident)
        status = cluster.read_status()
        if status and status.phase in IN_PROGRESS:
            busy.append(f"{ident}({status.operation})")
    return VolumeContents(tuple(clusters), tuple(busy))


def cluster_tags(clusters: Sequence[str]) -> dict[str, str]:
    """`cluster-mgmt:cluster-count` and the ids, space-separated, in as many
    `cluster-mgmt:clusters-<n>` tags as their 256-character values need (at most 40; then
    `cluster-mgmt:clusters-truncated` says so: the count stays exact)."""
    tags = {f"{TAG_PREFIX}cluster-count": str(len(clusters))}
    chunk: list[str] = []
    chunks: list[str] = []
    for ident in clusters:
        if chunk and len(" ".join([*chunk, ident])) > TAG_VALUE_LIMIT:
            chunks.append(" ".join(chunk))
            chunk = []
        chunk.append(ident)
    if chunk:
        chunks.append(" ".join(chunk))
    for number, value in enumerate(chunks[:MAX_CLUSTER_TAGS], start=1):
        tags[f"{TAG_PREFIX}clusters-{number}"] = value
    if len(chunks) > MAX_CLUSTER_TAGS:
        tags[f"{TAG_PREFIX}clusters-truncated"] = "true"
    return tags


def description(volume_id: str, contents: VolumeContents, taken_at: str) -> str:
    """The snapshot's description (at most 255 characters)."""
    text = f"cluster-mgmt state volume {volume_id} at {taken_at}; {len(contents.clusters)} clusters"
    if contents.in_progress:
        text += "; mid-operation: " + " ".join(contents.in_progress)
    if len(text) > DESCRIPTION_LIMIT:
        text = text[: DESCRIPTION_LIMIT - 1] + "…"
    return text


@dataclass
class SnapshotReport:
    """The snapshot taken and the old ones deleted; no secret inside."""

    snapshot_id: str
    volume_id: str
    region: str
    started_at: str
    volume_size_gib: int
    encrypted: bool
    description: str
    tags: dict[str, str]
    deleted: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "volume_id": self.volume_id,
            "started_at": self.started_at,
            "encrypted": self.encrypted,
            "deleted": list(self.deleted),
        }


def _attempts(ec2: Any) -> int:
    retries = getattr(ec2.meta.config, "retries", None) or {}
    return int(retries.get("total_max_attempts") or retries.get("max_attempts") or 1)


@contextmanager
def aws_errors(ec2: Any, doing: str, target: Target) -> Iterator[None]:
    """Turn botocore's failures while `doing` into one-line BackupErrors."""
    try:
        yield
    except NoCredentialsError:
        raise BackupInputError(
            f"no AWS credentials while {doing}: set the keys in the cluster-mgmt-aws-credentials "
            "block, or give the worker a role"
        ) from None
    except _UNREACHABLE as exc:
        raise BackupError(
            f"cannot reach EC2 at {ec2.meta.endpoint_url} while {doing} ({exc}) after "
            f"{_attempts(ec2)} attempts; check aws_region, endpoint_url and the network"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code in _CREDENTIALS:
            fix = "fix the keys in the cluster-mgmt-aws-credentials block"
        elif code in _THROTTLED:
            fix = f"EC2 still throttled after {_attempts(ec2)} attempts; run the backup later"
        elif code == "UnauthorizedOperation" or code.endswith("AccessDenied"):
            fix = (
                "allow ec2:DescribeVolumes, ec2:CreateSnapshot, ec2:CreateTags, "
                "ec2:DescribeSnapshots and ec2:DeleteSnapshot for these credentials"
            )
        elif code.startswith("InvalidVolume"):
            fix = (
                f"check ebs_volume_id {target.volume_id} and aws_region {target.region} "
                "in the cluster-state-volume block"
            )
        else:
            fix = "see the AWS message"
        raise BackupError(f"EC2 refused {doing}: {code}: {message}; {fix}") from None
    except WaiterError as exc:
        raise BackupError(f"{doing}: {exc}") from None
    except BotoCoreError as exc:
        raise BackupError(f"EC2 call failed while {doing}: {exc}") from None


def snapshot_volume(
    ec2: Any,
    target: Target,
    contents: VolumeContents,
    *,
    retain: int,
    wait_delay: int = WAIT_DELAY,
    wait_attempts: int = WAIT_ATTEMPTS,
) -> SnapshotReport:
    """Snapshot the volume, tagged as ours; wait for it; keep our newest `retain` snapshots.

    Only what the volume itself carries decides encryption: an encrypted volume's snapshot is
    encrypted, and it is checked once complete.
    """
    if retain < 1:
        raise BackupInputError(f"retain must be at least 1, got {retain}")
    with aws_errors(ec2, f"reading volume {target.volume_id}", target):
        volume = ec2.describe_volumes(VolumeIds=[target.volume_id])["Volumes"][0]
    taken_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags = {OWNER_TAG: OWNER_VALUE, f"{TAG_PREFIX}taken-at": taken_at}
    tags |= cluster_tags(contents.clusters)
    text = description(target.volume_id, contents, taken_at)
    with aws_errors(ec2, f"creating a snapshot of {target.volume_id}", target):
        created = ec2.create_snapshot(
            VolumeId=target.volume_id,
            Description=text,
            TagSpecifications=[
                {
                    "ResourceType": "snapshot",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )
    snapshot_id = created["SnapshotId"]
    waited = f"waiting up to {wait_delay * wait_attempts} s for snapshot {snapshot_id}"
    with aws_errors(ec2, waited, target):
        ec2.get_waiter("snapshot_completed").wait(
            SnapshotIds=[snapshot_id],
            WaiterConfig={"Delay": wait_delay, "MaxAttempts": wait_attempts},
        )
        done = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    if bool(done.get("Encrypted")) != bool(volume.get("Encrypted")):
        raise BackupError(
            f"snapshot {snapshot_id} encrypted={done.get('Encrypted')} differs from volume "
            f"{target.volume_id} encrypted={volume.get('Encrypted')}; delete it and check the "
            "account's EBS encryption settings"
        )
    report = SnapshotReport(
        snapshot_id=snapshot_id,
        volume_id=target.volume_id,
        region=target.region,
        started_at=done["StartTime"].astimezone(UTC).isoformat(),
        volume_size_gib=int(done.get("VolumeSize") or volume.get("Size") or 0),
        encrypted=bool(done.get("Encrypted")),
        description=text,
        tags=tags,
    )
    report.deleted = prune(ec2, target, retain=retain, keep=snapshot_id)
    return report


def prune(ec2: Any, target: Target, *, retain: int, keep: str) -> list[str]:
    """Delete our completed snapshots of the volume beyond the newest `retain` (counting
    `keep`, the one just taken); others' snapshots are never touched."""
    with aws_errors(ec2, f"listing the snapshots of {target.volume_id}", target):
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"],
            Filters=[
                {"Name": "volume-id", "Values": [target.volume_id]},
                {"Name": f"tag:{OWNER_TAG}", "Values": [OWNER_VALUE]},
            ],
        )
        found = [s for page in pages for s in page["Snapshots"]]
    ours = [
        s
        for s in found
        if s["SnapshotId"] != keep
        and s.get("State") == "completed"
        and s.get("VolumeId") == target.volume_id
        and {"Key": OWNER_TAG, "Value": OWNER_VALUE} in s.get("Tags", [])
    ]
    ours.sort(key=lambda s: s["StartTime"], reverse=True)
    deleted = []
    for snapshot in ours[retain - 1 :]:
        with aws_errors(ec2, f"deleting old snapshot {snapshot['SnapshotId']}", target):
            ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])
        deleted.append(snapshot["SnapshotId"])
    return deleted
