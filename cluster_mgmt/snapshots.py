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

import json
import shlex
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import paramiko

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.hostkeys import (
    HostKeyPolicy,
    host_matches,
    known_hosts_name,
    load_private_key,
    parse_known_hosts,
    verify_host_key,
)
from cluster_mgmt.patterns import TextRule
from cluster_mgmt.state import SNAPSHOTS, ClusterState
from cluster_mgmt.state_files import load_json

SNAPSHOT_NAME = TextRule(
    r"(?![-A-Za-z0-9_.]*\.\.)(?![-A-Za-z0-9_.]*\.zip$)[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,118}[A-Za-z0-9])?",
    120,
    "use 1-120 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, "
    "without '..' or a '.zip' ending (it names files on the etcd nodes: no '/')",
)
SnapshotName = SNAPSHOT_NAME.type("snapshot_name")
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


class _KnownHostsOnly(paramiko.MissingHostKeyPolicy):
    """Accept a node's host key only if known_hosts trusts it (the service's own rules)."""

    def __init__(self, address: str, port: int, trusted: list[Any]) -> None:
        self.address, self.port = address, port
        name = known_hosts_name(address, port)
        self.known = [k for k in trusted if host_matches(k.patterns, name)]

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        verify_host_key(self.address, self.port, key, self.known, HostKeyPolicy.REJECT)


def snapshot_size(
    address: str,
    port: int,
    user: str,
    name: str,
    pkey: paramiko.PKey,
    trusted: list[Any],
    timeout: float = 10.0,
) -> int | None:
    """Size in bytes of snapshot `name` on one etcd node; None if it cannot be read there."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_KnownHostsOnly(address, port, trusted))
    try:
        client.connect(
            address,
            port,
            user,
            pkey=pkey,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
        source = shlex.quote(f"etcd-rolling-snapshots:/backup/{name}.zip")
        _, stdout, _ = client.exec_command(f"docker cp {source} -", timeout=timeout)
        with tarfile.open(fileobj=stdout, mode="r|") as archive:
            member = archive.next()
        return member.size if member is not None and member.isfile() else None
    except Exception:  # noqa: BLE001 - a size is informative; never fail a snapshot for it
        return None
    finally:
        client.close()


def snapshot_sizes(
    nodes: list[tuple[str, int, str]],
    name: str,
    private_key: str,
    known_hosts: str,
    timeout: float = 10.0,
) -> dict[str, int | None]:
    """Size of snapshot `name` on each etcd node `(address, port, user)`, concurrently."""
    pkey = load_private_key(private_key)
    trusted = parse_known_hosts(known_hosts)
    with ThreadPoolExecutor(max_workers=max(1, min(len(nodes), 16))) as pool:
        sizes = pool.map(
            lambda n: snapshot_size(n[0], n[1], n[2], name, pkey, trusted, timeout), nodes
        )
        return dict(zip((n[0] for n in nodes), sizes, strict=True))
