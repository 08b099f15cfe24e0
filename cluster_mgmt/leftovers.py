"""What `rke remove` left on a cluster's nodes: checked over SSH after a teardown.

`rke remove` deletes RKE's containers and empties (never deletes) the directories its cleaner
container names; it leaves its local etcd snapshots (`/opt/rke`), the kubelet's directory and
any workload container. Each node is asked, over SSH with preflight's access and host-key
checks, which of these paths still hold something and which containers exist. Plain Python,
no Prefect.

A node may keep its filesystem under a root folder: the optional environment variable
`CLUSTER_MGMT_NODE_ROOT` of the SSH session (for example set by the node's sshd `SetEnv`) is
prefixed to every path checked. Unset on a normal node, the paths are checked as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from cluster_mgmt.preflight import CommandResult, NodeTarget, run_command

NODE_ROOT_ENV = "CLUSTER_MGMT_NODE_ROOT"
VERIFICATION_FILE = "teardown-verification.json"

# Emptied by rke's cleaner container (hosts.CleanUpAll): anything inside is a leftover.
CLEANED_PATHS = (
    "/etc/kubernetes",
    "/etc/cni",
    "/opt/cni",
    "/var/lib/cni",
    "/var/run/calico",
    "/var/lib/etcd",
)
# Never touched by `rke remove`: etcd snapshots (they embed the cluster's state file), the
# kubelet's pod directories, Rancher's data.
KEPT_PATHS = ("/opt/rke", "/var/lib/kubelet", "/var/lib/rancher")
PATHS = CLEANED_PATHS + KEPT_PATHS
# RKE's own helper that outlives it: a first `rke up` reads the nodes' legacy state through a
# `cluster-state-deployer` container (pki.FetchFileFromHost) and never removes it. It holds
# no data (its one bind, /etc/kubernetes, is what the cleaner empties), so it is listed
# apart and does not count as a leftover.
RKE_HELPERS = frozenset({"cluster-state-deployer"})

COMMAND = f"""r="${{{NODE_ROOT_ENV}:-}}"
for d in {" ".join(PATHS)}; do
  p="$r$d"
  if [ -e "$p" ] || [ -L "$p" ]; then
    if ! l=$(ls -A "$p" 2>/dev/null); then echo "unreadable $d"
    elif [ -n "$l" ]; then echo "path $d"; fi
  fi
done
if c=$(docker ps -a --format '{{{{.Names}}}}' 2>/dev/null); then
  for n in $c; do echo "container $n"; done
else echo "docker-unavailable"; fi
"""


@dataclass(frozen=True)
class NodeLeftovers:
    """One node after `rke remove`: what is left, or why it could not be (fully) checked."""

    node: str
    paths: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    unverified: str | None = None
    rke_helpers: tuple[str, ...] = ()

    @property
    def has_leftovers(self) -> bool:
        return bool(self.paths or self.containers)

    @property
    def result(self) -> str:
        if self.has_leftovers:
            return "leftovers"
        return "unverified" if self.unverified else "clean"

    def row(self) -> dict[str, str]:
        """A secret-free artifact table row."""
        found = [*self.paths, *(f"container {c}" for c in self.containers)]
        return {
            "node": self.node,
            "result": self.result,
            "leftovers": ", ".join(found) or "-",
            "unverified": self.unverified or "-",
            "rke_helpers": ", ".join(self.rke_helpers) or "-",
        }


def _endpoint(result: CommandResult) -> str:
    host = f"[{result.address}]" if ":" in result.address else result.address
    return f"{host}:{result.port}"


def parse(result: CommandResult) -> NodeLeftovers:
    """The node's leftovers from the check command's outcome."""
    node = _endpoint(result)
    if result.error is not None:
        return NodeLeftovers(node, unverified=result.error)
    if result.exit_status != 0:
        detail = " ".join(result.stderr.split())[:200] or "no output"
        return NodeLeftovers(
            node, unverified=f"the check failed (exit {result.exit_status}): {detail}"
        )
    paths, containers, helpers, problems = [], [], [], []
    for line in result.stdout.splitlines():
        kind, _, value = line.strip().partition(" ")
        if kind == "path" and value in PATHS:
            paths.append(value)
        elif kind == "container" and value:
            (helpers if value in RKE_HELPERS else containers).append(value)
        elif kind == "unreadable" and value in PATHS:
            problems.append(f"{value} is not readable by the SSH user")
        elif kind == "docker-unavailable":
            problems.append("`docker ps -a` failed: containers not checked")
    unverified = "; ".join(problems) or None
    return NodeLeftovers(node, tuple(paths), tuple(containers), unverified, tuple(helpers))


def check_leftovers(
    targets: Sequence[NodeTarget],
    *,
    private_key: str,
    known_hosts: str,
    recorded_known_hosts: str,
    connect_timeout: float = 10.0,
) -> list[NodeLeftovers]:
    """Ask every node what `rke remove` left; an unreachable node is unverified, never clean."""
    results = run_command(
        targets,
        COMMAND,
        "leftover check",
        private_key=private_key,
        known_hosts=known_hosts,
        recorded_known_hosts=recorded_known_hosts,
        connect_timeout=connect_timeout,
    )
    return [parse(r) for r in results]


def summary(nodes: Sequence[NodeLeftovers]) -> str:
    """`leftovers on N nodes; M nodes unverified`, or `nodes verified clean`."""
    left = sum(n.has_leftovers for n in nodes)
    unverified = sum(n.unverified is not None for n in nodes)
    parts = []
    if left:
        parts.append(f"leftovers on {left} node{'s' * (left != 1)}")
    if unverified:
        parts.append(f"{unverified} node{'s' * (unverified != 1)} unverified")
    return "; ".join(parts) or f"{len(nodes)} nodes verified clean"


def verification_document(nodes: Sequence[NodeLeftovers]) -> str:
    """The JSON kept in the archived directory (`teardown-verification.json`)."""
    doc = {
        "checked_at": datetime.now(UTC).isoformat(),
        "summary": summary(nodes),
        "checked_paths": list(PATHS),
        "nodes": [{**asdict(n), "result": n.result} for n in nodes],
    }
    return json.dumps(doc, indent=2) + "\n"
