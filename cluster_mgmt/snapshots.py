"""Etcd snapshots: their names, and the record of those this service took (`snapshots.json`).

rke keeps a snapshot as `/opt/rke/etcd-snapshots/<name>.zip` on every etcd node and its state
as `/etc/kubernetes/<name>.rkestate`; it has no command that lists them. So every snapshot
taken through the service is recorded in the cluster's `snapshots.json` (written atomically),
which the cluster's artifact lists and a restore checks names against. rke reports no size:
it is read from each etcd node the way rke itself reads a snapshot back, `docker cp` out of the
`etcd-rolling-snapshots` container (whose `/backup` is `/opt/rke/etcd-snapshots`), only the
tar header.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.node_shell import NodeAccess, NodeCommandError, run_command
from cluster_mgmt.patterns import TextRule
from cluster_mgmt.preflight import NodeTarget
from cluster_mgmt.state import SNAPSHOTS, ClusterState
from cluster_mgmt.state_files import load_json

SNAPSHOT_NAME = TextRule(
    r"(?![-A-Za-z0-9_.]*\.\.)(?![-A-Za-z0-9_.]*\.zip$)[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,118}[A-Za-z0-9])?",
    120,
    "use 1-120 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, "
    "without '..' or a '.zip' ending (it names files on the etcd nodes: no '/')",
)
SnapshotName = SNAPSHOT_NAME.type("snapshot_name")
HEAD = 16 * 1024  # enough for a tar member's pax and ustar headers
MAX_RECORDS = 200  # the newest are kept; rke keeps the files until someone deletes them


def default_snapshot_name(moment: datetime | None = None) -> str:
    """`snapshot-<UTC stamp to the second>`, e.g. `snapshot-20261128T101500Z`."""
    return f"snapshot-{(moment or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot taken through the service (secret-free)."""

    name: str
    taken_at: str  # ISO 8601, UTC
    etcd_nodes: list[str]
    flow_run_id: str
    size_bytes: dict[str, int | None] | None = None  # per etcd node; None: not read

    def row(self) -> dict[str, str]:
        sizes = sorted({s for s in (self.size_bytes or {}).values() if s is not None})
        return {
            "snapshot": self.name,
            "taken at": self.taken_at,
            "size": " / ".join(f"{s:,} B" for s in sizes) or "unknown",
            "etcd nodes": ", ".join(self.etcd_nodes),
            "flow run": self.flow_run_id,
        }


def read_snapshots(cluster: ClusterState) -> list[SnapshotRecord]:
    """The recorded snapshots, oldest first ([] without a readable snapshots.json)."""
    doc = load_json((cluster.read_text(SNAPSHOTS) or "").encode())
    if not isinstance(doc, dict) or not isinstance(doc.get("snapshots"), list):
        return []
    records = []
    for item in doc["snapshots"]:
        try:
            records.append(SnapshotRecord(**item))
        except TypeError:
            continue
    return records


def record_snapshot(cluster: ClusterState, record: SnapshotRecord) -> None:
    """Add `record` to snapshots.json (atomically; the newest MAX_RECORDS are kept)."""
    records = [r for r in read_snapshots(cluster) if r.name != record.name] + [record]
    body = {"snapshots": [asdict(r) for r in records[-MAX_RECORDS:]]}
    cluster.write_text(SNAPSHOTS, json.dumps(body, indent=2) + "\n")


def check_new_name(cluster: ClusterState, name: str) -> None:
    """RefusedError if the cluster already has a snapshot of that name (rke would overwrite)."""
    if any(r.name == name for r in read_snapshots(cluster)):
        raise RefusedError(
            f"cluster {cluster.environment}/{cluster.name} already has a snapshot named {name}; "
            "rke would overwrite it: choose another snapshot name"
        )


def check_known_name(cluster: ClusterState, name: str) -> None:
    """RefusedError if `name` is not a snapshot recorded for the cluster, listing those that are."""
    names = [r.name for r in read_snapshots(cluster)]
    if name not in names:
        recorded = ", ".join(names[-10:]) or "none"
        raise RefusedError(
            f"cluster {cluster.environment}/{cluster.name} has no recorded snapshot named "
            f"{name} (newest recorded: {recorded}); pick a recorded one, or set "
            "require_recorded to false to restore one of RKE's recurring snapshots by name"
        )


def snapshot_size(
    target: NodeTarget, name: str, access: NodeAccess, timeout: float = 10.0
) -> int | None:
    """Size in bytes of snapshot `name` on one etcd node, read as rke reads a snapshot back
    (`docker cp` out of etcd-rolling-snapshots: a tar stream; only its first HEAD bytes, the
    headers, are read); None if it cannot be read there."""
    source = shlex.quote(f"etcd-rolling-snapshots:/backup/{name}.zip")
    try:
        status, head, _ = run_command(
            target, access, f"docker cp {source} - | head -c {HEAD}", timeout=timeout
        )
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as archive:
            member = archive.next()  # pax headers first, then the file's: all within HEAD
    except (NodeCommandError, tarfile.TarError):  # a size is informative only
        return None
    return member.size if status == 0 and member is not None and member.isfile() else None


def snapshot_sizes(
    targets: list[NodeTarget], name: str, access: NodeAccess, timeout: float = 10.0
) -> dict[str, int | None]:
    """Size of snapshot `name` on each etcd node, concurrently (None where unreadable)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(targets), 16))) as pool:
        sizes = pool.map(lambda t: snapshot_size(t, name, access, timeout), targets)
        return dict(zip((t.address for t in targets), sizes, strict=True))
