"""Restore drills: would a cluster's backups bring it back? Read-only; no lock, no writes.

Per cluster: its newest history copy is restored to a scratch directory and checked there
(cluster.rkestate and the admin kubeconfig complete, both of the CA the live API server
presents, the rkestate's nodes those of the recorded cluster.yml), and the newest etcd snapshot
on an etcd node is fetched over SSH and checked (a non-empty zip that reads back intact, holding
the snapshot as rke writes it).
"""

from __future__ import annotations

import io
import shlex
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_mgmt.node_shell import (
    NodeAccess,
    NodeCommandError,
    first_answer,
    node_path,
    run_command,
)
from cluster_mgmt.preflight import NodeTarget
from cluster_mgmt.recovery import (
    API_PORT,
    config_nodes,
    kubeconfig_ca,
    probe_live_ca,
    same_certificate,
    state_ca,
    state_nodes,
)
from cluster_mgmt.state import CLUSTER_YML, KNOWN_HOSTS, KUBECONFIG, RKESTATE, ClusterState
from cluster_mgmt.state_files import is_kubeconfig, is_rkestate, load_yaml

SNAPSHOT_DIR = "/opt/rke/etcd-snapshots"
MAX_SNAPSHOT_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class DrillSettings:
    """How the drill reaches nodes and API servers, and how long it may take."""

    access: NodeAccess
    user: str
    timeout: float = 10.0
    snapshot_timeout: float = 300.0
    concurrency: int = 8


@dataclass
class Drill:
    """One cluster's drill: what was checked and every reason it failed (secret-free)."""

    environment: str
    name: str
    history_copy: str = "-"
    snapshot: str = "-"
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def row(self) -> dict[str, Any]:
        return {
            "cluster": f"{self.environment}/{self.name}",
            "result": "passed" if self.ok else "FAILED",
            "history copy": self.history_copy,
            "etcd snapshot": self.snapshot,
            "reason": "; ".join(self.reasons) or "-",
        }


def drill_all(
    clusters: list[ClusterState], settings: DrillSettings, deadline: float
) -> list[Drill]:
    """Drill every cluster, `settings.concurrency` at a time; a cluster still running at the
    `deadline` (time.monotonic) fails with that reason."""
    drills = [Drill(c.environment, c.name) for c in clusters]
    if not clusters:
        return drills
    pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="drill")
    futures = {
        pool.submit(drill_cluster, c, settings, d): d for c, d in zip(clusters, drills, strict=True)
    }
    _, late = wait(futures, timeout=max(deadline - time.monotonic(), 0))
    for future in late:
        future.cancel()
        futures[future].reasons.append("the drill did not finish in time")
    pool.shutdown(wait=False, cancel_futures=True)
    return drills


def drill_cluster(cluster: ClusterState, settings: DrillSettings, drill: Drill) -> Drill:
    """Check the newest history copy and the newest etcd snapshot of one cluster."""
    try:
        config = load_yaml((cluster.read_text(CLUSTER_YML) or "").encode())
        if not isinstance(config, dict):
            drill.reasons.append("no readable cluster.yml on the volume")
            return drill
        ca = _check_history(cluster, config, settings, drill)
        _check_snapshot(cluster, config, settings, drill, ca)
    except Exception as exc:  # noqa: BLE001 - one odd cluster must not sink the others' drills
        drill.reasons.append(f"unexpected {type(exc).__name__}: {exc}")
    return drill


def _check_history(
    cluster: ClusterState, config: dict, settings: DrillSettings, drill: Drill
) -> str | None:
    """Restore the newest history copy to a scratch directory and check it there; its CA."""
    copy = cluster.newest_history_copy(RKESTATE)
    if copy is None:
        drill.reasons.append("no history copy of cluster.rkestate")
        return None
    entry = copy.parent
    drill.history_copy = entry.name
    with tempfile.TemporaryDirectory(prefix="cluster-mgmt-drill-") as scratch:
        restored = Path(scratch) / "restored"
        shutil.copytree(entry, restored)
        rkestate = (restored / RKESTATE).read_bytes()
        kubeconfig_path = restored / KUBECONFIG
        kubeconfig = kubeconfig_path.read_bytes() if kubeconfig_path.is_file() else b""
    if not is_rkestate(rkestate):
        drill.reasons.append(f"{entry.name}: cluster.rkestate is not complete RKE state")
        return None
    ca = state_ca(rkestate)
    if not is_kubeconfig(kubeconfig):
        drill.reasons.append(f"{entry.name}: the admin kubeconfig is missing or incomplete")
    elif not same_certificate(kubeconfig_ca(kubeconfig), ca):
        drill.reasons.append(f"{entry.name}: the admin kubeconfig trusts another CA than the state")
    address, trusted, unreachable = probe_live_ca(rkestate, settings.timeout)
    if address is None:
        drill.reasons.append(f"no API server answered to compare the CA with ({unreachable})")
    elif not trusted:
        drill.reasons.append(
            f"{entry.name}: the API server at {address}:{API_PORT} presents a certificate not "
            "signed by the copy's kube-ca"
        )
    recorded, held = config_nodes(cluster.path(CLUSTER_YML).read_bytes()), state_nodes(rkestate)
    if recorded != held:
        drill.reasons.append(
            f"{entry.name}: the state's nodes {_nodes(held)} differ from cluster.yml's "
            f"{_nodes(recorded)}"
        )
    return ca


def _nodes(nodes: dict[str, tuple[str, ...]]) -> str:
    return ", ".join(f"{a} ({'+'.join(r)})" for a, r in sorted(nodes.items())) or "none"


def _etcd_targets(config: dict, user: str) -> list[NodeTarget]:
    return [
        NodeTarget(n["address"], int(n.get("port", 22)), n.get("user") or user)
        for n in config.get("nodes") or []
        if "etcd" in (n.get("role") or [])
    ]


def _check_snapshot(
    cluster: ClusterState, config: dict, settings: DrillSettings, drill: Drill, ca: str | None
) -> None:
    """Find the newest snapshot on an etcd node, fetch it and check it reads back intact."""
    backup = ((config.get("services") or {}).get("etcd") or {}).get("backup_config") or {}
    if backup.get("enabled") is False:
        drill.snapshot = "disabled in cluster.yml"
        return
    access = NodeAccess(
        settings.access.private_key,
        settings.access.known_hosts,
        cluster.read_text(KNOWN_HOSTS) or "",
        settings.access.connect_timeout,
    )
    folder = node_path(SNAPSHOT_DIR)
    listing = f"find {folder}/ -maxdepth 1 -type f -name '*.zip' -printf '%T@ %s %f\\n' 2>/dev/null"
    try:
        node, _, out, _ = first_answer(
            _etcd_targets(config, settings.user), access, listing, timeout=settings.timeout
        )
    except NodeCommandError as exc:
        drill.reasons.append(f"no etcd node could be asked for its snapshots: {exc}")
        return
    found = sorted(_listed(out.decode(errors="replace")), reverse=True)
    if not found:
        drill.reasons.append(f"no etcd snapshot in {SNAPSHOT_DIR} on {node.address}")
        return
    mtime, size, filename = found[0]
    drill.snapshot = f"{filename} on {node.address}"
    interval = float(backup.get("interval_hours") or 12)
    age_hours = (time.time() - mtime) / 3600
    if age_hours > 2 * interval + 1:
        drill.reasons.append(
            f"the newest snapshot {filename} is {age_hours:.0f} h old (interval {interval:g} h)"
        )
    if size == 0:
        drill.reasons.append(f"snapshot {filename} is empty")
        return
    try:
        status, data, err = run_command(
            node,
            access,
            f"cat {folder}/{shlex.quote(filename)}",
            timeout=settings.snapshot_timeout,
            max_bytes=MAX_SNAPSHOT_BYTES,
        )
    except NodeCommandError as exc:
        drill.reasons.append(f"fetching snapshot {filename} failed: {exc}")
        return
    if status != 0:
        drill.reasons.append(f"reading snapshot {filename} failed: {err or f'exit {status}'}")
        return
    problem = snapshot_problem(data, filename, ca)
    if problem:
        drill.reasons.append(f"snapshot {filename}: {problem}")


def _listed(text: str) -> list[tuple[float, int, str]]:
    found = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            try:
                found.append((float(parts[0]), int(parts[1]), parts[2]))
            except ValueError:
                continue
    return found


def snapshot_problem(data: bytes, filename: str, ca: str | None = None) -> str | None:
    """What is wrong with a snapshot as rke writes it, or None: a zip that reads back intact
    (every CRC), holding the etcd data under ``backup/<name>`` with content, and the state
    file ``backup/<name>.rkestate``, when present, complete and of the cluster's CA."""
    name = filename.removesuffix(".zip")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            broken = archive.testzip()
            if broken is not None:
                return f"member {broken} fails its CRC check"
            members = archive.infolist()
            data_size = sum(
                m.file_size
                for m in members
                if m.filename == f"backup/{name}" or m.filename.startswith(f"backup/{name}/")
            )
            state_member = f"backup/{name}.rkestate"
            state = archive.read(state_member) if state_member in archive.namelist() else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a readable zip ({exc})"
    if data_size == 0:
        return f"holds no etcd data under backup/{name}"
    if state is not None:
        if not is_rkestate(state):
            return "its state file is not complete RKE state"
        if ca is not None and not same_certificate(state_ca(state), ca):
            return "its state file holds another CA than the cluster's"
    return None
