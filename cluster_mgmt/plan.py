"""Plan an update: what a requested spec changes on a cluster, what RKE restarts for it, and
what the service refuses, decided from the cluster's recorded state (and its live API, if read).

The baseline is what RKE last applied: the nodes and Kubernetes version of `cluster.rkestate`'s
`currentState` (falling back to `cluster.yml` when RKE never completed a run), the other
settings of `cluster.yml`, and the customer access recorded under `resources/`. Plain Python,
fast enough for 100-node clusters; nothing here logs or returns a secret.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from cluster_mgmt.customer import has_recorded_access, recorded_access
from cluster_mgmt.health import certificate_findings
from cluster_mgmt.kube import KubeError, connect
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.rke_config import diff_configs
from cluster_mgmt.spec import ClusterSpec, CustomerAccess
from cluster_mgmt.state import CLUSTER_YML, RKESTATE, ClusterState, Status
from cluster_mgmt.state_files import load_json

EXPIRY_WARNING_DAYS = 30
RESUMABLE = (Phase.FAILED, Phase.UPDATING, Phase.CONFIGURING)  # after an interrupted update
_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)-rancher(\d+)-(\d+)")
# What another run of a flow finishes, for a cluster that operation left unfinished.
_FINISH_WITH = {
    Operation.PROVISION: "provision-cluster",
    Operation.CONFIGURE: "configure-cluster",
    Operation.TEARDOWN: "teardown-cluster",
}


def version_key(version: str) -> tuple[int, ...]:
    """`v1.30.5-rancher1-1` as comparable numbers; ValueError for anything else."""
    match = _VERSION.fullmatch(version or "")
    if match is None:
        raise ValueError(f"{version!r} is not an RKE Kubernetes version")
    return tuple(int(g) for g in match.groups())


@dataclass(frozen=True)
class NodeView:
    """One node as RKE identifies and configures it (cluster.yml's vocabulary)."""

    address: str
    roles: tuple[str, ...]
    port: str = "22"
    user: str = ""
    internal_address: str = ""
    hostname: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    taints: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def of(cls, node: dict[str, Any], json_tags: bool = False) -> NodeView:
        """From a cluster.yml node, or (`json_tags`) an rkestate rkeConfig node."""
        internal, hostname = (
            ("internalAddress", "hostnameOverride")
            if json_tags
            else ("internal_address", "hostname_override")
        )
        address = str(node.get("address", ""))
        taints = node.get("taints") or []
        return cls(
            address=address,
            roles=tuple(sorted(node.get("role") or [])),
            port=str(node.get("port") or "22"),
            user=str(node.get("user") or ""),
            internal_address=str(node.get(internal) or address),
            hostname=str(node.get(hostname) or address).lower(),
            labels=tuple(sorted((node.get("labels") or {}).items())),
            taints=tuple(
                sorted((t.get("key", ""), t.get("value", ""), t.get("effect", "")) for t in taints)
            ),
        )

    def row(self) -> dict[str, str]:
        return {"address": self.address, "roles": "+".join(self.roles)}


@dataclass
class Applied:
    """What the volume records about a cluster: status, last config, what RKE applied."""

    status: Status | None = None
    config: dict[str, Any] | None = None  # cluster.yml
    nodes: list[NodeView] = field(default_factory=list)
    kubernetes_version: str = ""
    source: str = ""  # where nodes and version come from
    first_expiry: datetime | None = None
    certificate_notes: list[str] = field(default_factory=list)
    customer: CustomerAccess | None = None


def read_applied(cluster: ClusterState, now: datetime | None = None) -> Applied:
    """The cluster's recorded state; an empty Applied when RKE never wrote any for it."""
    applied = Applied()
    if not cluster.dir.is_dir():
        return applied
    applied.status = cluster.read_status()
    config_text = cluster.read_text(CLUSTER_YML)
    if config_text is not None:
        applied.config = yaml.safe_load(config_text) or {}
        applied.nodes = [NodeView.of(n) for n in applied.config.get("nodes") or []]
        applied.kubernetes_version = str(applied.config.get("kubernetes_version") or "")
        applied.source = CLUSTER_YML
    rkestate = cluster.read_text(RKESTATE)
    if rkestate is not None:
        data = rkestate.encode()
        current = ((load_json(data) or {}).get("currentState") or {}).get("rkeConfig")
        if isinstance(current, dict) and current.get("nodes"):
            applied.nodes = [NodeView.of(n, json_tags=True) for n in current["nodes"]]
            applied.kubernetes_version = str(current.get("kubernetesVersion") or "")
            applied.source = f"{RKESTATE} (currentState)"
        try:
            applied.first_expiry, applied.certificate_notes = certificate_findings(
                data, now or datetime.now(UTC), EXPIRY_WARNING_DAYS
            )
        except ValueError as exc:
            applied.certificate_notes = [str(exc)]
    if has_recorded_access(cluster):
        applied.customer = recorded_access(cluster)
    return applied


@dataclass
class Live:
    """The cluster as its Kubernetes API shows it (read with the admin kubeconfig)."""

    reachable: bool
    error: str = ""
    version: str = ""
    ready: dict[str, bool] = field(default_factory=dict)  # node name → Ready


def observe(kubeconfig: str | None) -> Live:
    """Read the server version and the nodes' Ready conditions; never raises."""
    if not kubeconfig:
        return Live(False, "no admin kubeconfig on the state volume")
    try:
        with connect(kubeconfig) as kube:
            version = (kube.get("/version") or {}).get("gitVersion", "")
            items = (kube.get("/api/v1/nodes") or {}).get("items") or []
    except KubeError as exc:
        return Live(False, str(exc))
    ready = {}
    for node in items:
        conditions = (node.get("status") or {}).get("conditions") or []
        ready[node["metadata"]["name"]] = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        )
    return Live(True, version=version, ready=ready)


@dataclass
class Plan:
    """The difference between a cluster's applied state and a requested spec."""

    environment: str
    name: str
    exists: bool
    phase: str = ""
    resume: bool = False  # an earlier update did not finish: rke up runs even without changes
    add: list[dict[str, str]] = field(default_factory=list)
    remove: list[dict[str, str]] = field(default_factory=list)
    changed: list[dict[str, str]] = field(default_factory=list)
    version_from: str = ""
    version_to: str = ""
    settings: list[str] = field(default_factory=list)
    customer_changed: bool = False
    restarts: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline: str = ""
    certificates_first_expiry: str = ""
    live: dict[str, Any] = field(default_factory=dict)
    new_or_changed: list[str] = field(default_factory=list)  # addresses to preflight

    @property
    def allowed(self) -> bool:
        return not self.refusals

    @property
    def has_changes(self) -> bool:
        return bool(
            self.add
            or self.remove
            or self.changed
            or self.version_from != self.version_to
            or self.settings
            or self.customer_changed
        )

    @property
    def needs_rke(self) -> bool:
        """True if `rke up` must run: anything but the customer access changes, or a resume."""
        return self.resume or bool(
            self.add
            or self.remove
            or self.changed
            or self.version_from != self.version_to
            or self.settings
        )

    def summary(self) -> str:
        """One line: refused (first reason), nothing to do, or the changes."""
        where = f"{self.environment}/{self.name}"
        if self.refusals:
            more = f" (+{len(self.refusals) - 1} more)" if len(self.refusals) > 1 else ""
            return f"update of {where} would be refused: {self.refusals[0]}{more}"
        if not self.has_changes:
            return f"{where}: " + (
                "no changes; rke up runs again to finish the interrupted update"
                if self.resume
                else "no changes, nothing to do"
            )
        parts = []
        if self.add:
            parts.append(f"add {', '.join(n['address'] for n in self.add)}")
        if self.remove:
            parts.append(f"remove {', '.join(n['address'] for n in self.remove)}")
        if self.changed:
            parts.append(f"change {', '.join(n['address'] for n in self.changed)}")
        if self.version_from != self.version_to:
            parts.append(f"Kubernetes {self.version_from} → {self.version_to}")
        if self.settings:
            parts.append(f"settings {', '.join(self.settings)}")
        if self.customer_changed:
            parts.append("customer access")
        return f"{where}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The secret-free result of plan-cluster."""
        result = asdict(self)
        result.update(
            allowed=self.allowed,
            has_changes=self.has_changes,
            needs_rke=self.needs_rke,
            summary=self.summary(),
        )
        return result

    def to_markdown(self) -> str:
        """The plan as the markdown of artifact `plan-<env>-<name>`."""
        lines = [
            f"# Update plan for {self.environment}/{self.name}",
            f"**{self.summary()}**",
            "",
            f"- phase: {self.phase or '-'}; baseline: {self.baseline or '-'}",
            f"- Kubernetes version: {self.version_from or '-'} → {self.version_to or '-'}",
            f"- first certificate expiry: {self.certificates_first_expiry or '-'}",
        ]
        if self.live:
            lines.append(f"- live cluster: {_live_line(self.live)}")
        for title, rows in (
            ("Nodes to add", self.add),
            ("Nodes to remove", self.remove),
            ("Nodes changed", self.changed),
        ):
            if rows:
                lines += ["", f"## {title}", *(_row_line(r) for r in rows)]
        sections = (
            ("Settings changed", self.settings),
            ("What RKE will do and restart", self.restarts),
            ("Refused", self.refusals),
            ("Notes", self.notes),
        )
        for title, items in sections:
            if items:
                lines += ["", f"## {title}", *(f"- {item}" for item in items)]
        return "\n".join(lines) + "\n"


def _row_line(row: dict[str, str]) -> str:
    return "- " + ", ".join(f"{k}: {v}" for k, v in row.items() if v)


def _live_line(live: dict[str, Any]) -> str:
    if not live.get("reachable"):
        return f"not reachable ({live.get('error', '')})"
    text = f"version {live.get('version') or '?'}, {live.get('nodes', 0)} nodes"
    for key in ("missing", "not_ready", "unexpected"):
        if live.get(key):
            text += f", {key.replace('_', ' ')}: {', '.join(live[key])}"
    return text


def _phase_refusal(plan: Plan, status: Status | None) -> str | None:
    """Why the cluster's phase forbids an update, or None (READY, or an unfinished update)."""
    if status is None or status.phase == Phase.READY:
        return None
    if status.operation == Operation.UPDATE and status.phase in RESUMABLE:
        plan.resume = True
        plan.notes.append(
            f"the last update left the cluster {status.phase} ({status.message}); this update "
            "runs rke up again, which converges"
        )
        return None
    finish = _FINISH_WITH.get(status.operation or "", f"{status.operation or 'its operation'}")
    return (
        f"the cluster is {status.phase} after {status.operation} ({status.message}); "
        f"update-cluster changes a READY cluster: finish that first with {finish}"
    )


def _node_changes(plan: Plan, before: list[NodeView], after: list[NodeView]) -> None:
    """Fill add/remove/changed, the refusals of identity changes and the preflight list."""
    old = {n.address: n for n in before}
    new = {n.address: n for n in after}
    plan.add = [n.row() for a, n in new.items() if a not in old]
    plan.remove = [n.row() for a, n in old.items() if a not in new]
    plan.new_or_changed = [a for a in new if a not in old]
    for address, node in new.items():
        was = old.get(address)
        if was is None or was == node:
            continue
        what = [
            f"{label} {getattr(was, attr) or '-'} → {getattr(node, attr) or '-'}"
            for attr, label in (
                ("roles", "roles"),
                ("port", "SSH port"),
                ("user", "SSH user"),
                ("internal_address", "internal address"),
                ("hostname", "hostname"),
            )
            if getattr(was, attr) != getattr(node, attr)
        ]
        if (was.labels, was.taints) != (node.labels, node.taints):
            what.append("labels/taints")
        plan.changed.append({"address": address, "change": "; ".join(what)})
        plan.new_or_changed.append(address)
        for attr, label in (("internal_address", "internal address"), ("hostname", "hostname")):
            if getattr(was, attr) != getattr(node, attr):
                plan.refusals.append(
                    f"node {address}: its {label} cannot change in place (RKE and etcd know the "
                    "node by it); remove the node in one update and add it back in the next"
                )


def _members(nodes: list[NodeView], role: str) -> set[str]:
    return {n.address for n in nodes if role in n.roles}


def _membership_rules(plan: Plan, before: list[NodeView], after: list[NodeView]) -> None:
    """One control-plane/etcd change per update, or two etcd nodes added or removed together to
    go from one odd etcd count to the next (1 → 3, 3 → 5, 5 → 3: RKE changes the members one
    after the other); etcd quorum kept; never an even etcd count."""
    etcd_before, etcd_after = _members(before, "etcd"), _members(after, "etcd")
    control_before, control_after = (
        _members(before, "controlplane"),
        _members(after, "controlplane"),
    )
    added, removed = etcd_after - etcd_before, etcd_before - etcd_after
    moved = added | removed | (control_before ^ control_after)
    etcd_pair = len(moved) == 2 and (added == moved or removed == moved)
    if len(moved) > 1 and not etcd_pair:
        plan.refusals.append(
            f"the control-plane/etcd membership of {len(moved)} nodes changes "
            f"({', '.join(sorted(moved))}); change one such node per update, or add or remove "
            "two etcd nodes together to go from one odd etcd count to the next"
        )
    majority = len(etcd_before) // 2 + 1
    if etcd_before and len(etcd_after & etcd_before) < majority:
        kept = len(etcd_after & etcd_before)
        plan.refusals.append(
            f"etcd would keep {kept} of its {len(etcd_before)} members, below the quorum "
            f"of {majority}; remove etcd members one at a time and keep a majority"
        )
    if len(etcd_after) % 2 == 0:
        plan.refusals.append(
            f"the cluster would have {len(etcd_after)} etcd members; an even count cannot "
            "keep quorum better than one fewer: keep an odd count (1, 3 or 5)"
        )
    for address in sorted(etcd_after - etcd_before):
        plan.restarts.append(
            f"etcd: member etcd-{address} is added to the etcd cluster and started, then the "
            "other etcd members are restarted with the new member list"
        )
    for address in sorted(etcd_before - etcd_after):
        plan.restarts.append(
            f"etcd: member etcd-{address} is removed from the etcd cluster, its etcd "
            "container and data are removed from the node"
        )
    if control_after != control_before:
        plan.restarts.append(
            "control plane: the kube-apiserver certificate changes with the control-plane "
            "addresses, so the certificates are deployed again and the control-plane "
            "components restarted; kube_config_cluster.yml is rewritten"
        )


def _version_rules(plan: Plan, supported: list[str]) -> None:
    old, new = plan.version_from, plan.version_to
    if not old or old == new:
        return
    try:
        before, after = version_key(old), version_key(new)
    except ValueError as exc:
        plan.refusals.append(str(exc))
        return
    if after < before:
        plan.refusals.append(
            f"kubernetes_version {new} is older than the cluster's {old}; RKE cannot "
            f"downgrade: keep {old} or choose a newer version"
        )
        return
    if after[0] != before[0] or after[1] > before[1] + 1:
        steps = [
            v
            for v in supported
            if _VERSION.fullmatch(v) and before[:2] < version_key(v)[:2] < after[:2]
        ]
        first = f"upgrade to {min(steps, key=version_key)} first" if steps else "go one minor"
        plan.refusals.append(
            f"upgrading {old} → {new} skips a minor version; Kubernetes upgrades one minor at "
            f"a time: {first}"
        )
        return
    plan.restarts.append(
        f"upgrade {old} → {new}: the control plane (kube-apiserver, kube-controller-manager, "
        "kube-scheduler) is upgraded one node at a time, then kubelet and kube-proxy on every "
        "node (workers in batches of max_unavailable_worker, 10 %); etcd is restarted if the "
        "version's etcd image differs"
    )


def _settings_rules(plan: Plan, stored: dict[str, Any] | None, config: dict[str, Any]) -> None:
    if stored is None:
        return
    ignored = ("nodes", "kubernetes_version", "ssh_key_path")
    plan.settings = [
        p for p in diff_configs(stored, config) if p.split(".")[0].split("[")[0] not in ignored
    ]
    if any(p.startswith("network.plugin") for p in plan.settings):
        old = (stored.get("network") or {}).get("plugin")
        plan.refusals.append(
            f"network_plugin cannot change from {old} to {config['network']['plugin']}: RKE "
            f"cannot replace a running cluster's network plugin; keep {old}"
        )
    if any(p.startswith("services.etcd.backup_config") for p in plan.settings):
        plan.restarts.append(
            "etcd snapshots: the etcd-rolling-snapshots container is recreated on every etcd "
            "node with the new interval and retention; etcd itself is not restarted"
        )


def _live_view(
    plan: Plan, live: Live | None, before: list[NodeView], after: list[NodeView]
) -> None:
    if live is None:
        return
    view: dict[str, Any] = {"reachable": live.reachable, "error": live.error}
    if live.reachable:
        known, wanted = {n.hostname for n in before}, {n.hostname for n in after}
        view.update(
            version=live.version,
            nodes=len(live.ready),
            missing=sorted(n for n in known if n not in live.ready),
            not_ready=sorted(n for n, ready in live.ready.items() if not ready),
            unexpected=sorted(n for n in live.ready if n not in known | wanted),
        )
        if live.version and plan.version_from and not plan.version_from.startswith(live.version):
            plan.notes.append(
                f"the API server reports {live.version} while RKE last applied "
                f"{plan.version_from}; an earlier upgrade may not have finished"
            )
        etcd_left = {n.hostname for n in after if "etcd" in n.roles}
        sick = sorted(n for n in etcd_left if live.ready.get(n) is False)
        if _members(before, "etcd") - _members(after, "etcd") and sick:
            plan.refusals.append(
                f"an etcd member is removed while etcd node(s) {', '.join(sick)} are not "
                "Ready: quorum could be lost; make them Ready first"
            )
    else:
        plan.notes.append(f"the live cluster was not read: {live.error}")
    plan.live = view


def plan_update(
    spec: ClusterSpec,
    config: dict[str, Any],
    applied: Applied,
    supported_versions: list[str],
    live: Live | None = None,
) -> Plan:
    """What updating the cluster to `spec` (rendered as `config`) does, and what is refused.

    Args:
        spec: The requested spec, its Kubernetes version resolved.
        config: `spec` rendered as cluster.yml (`render_cluster_config`).
        applied: The cluster's recorded state (`read_applied`).
        supported_versions: The rke-settings block's supported Kubernetes versions.
        live: The live cluster, when it was read.
    """
    plan = Plan(spec.environment, spec.name, exists=bool(applied.nodes))
    where = f"cluster {spec.environment}/{spec.name}"
    if not applied.nodes:
        plan.refusals.append(
            f"{where} does not exist on the state volume (RKE never wrote state for it): "
            "create it with provision-cluster"
        )
        return plan
    status = applied.status
    plan.phase = status.phase if status else ""
    plan.baseline = applied.source
    refusal = _phase_refusal(plan, status)
    if refusal:
        plan.refusals.append(refusal)
    after = [NodeView.of(n) for n in config["nodes"]]
    plan.version_from, plan.version_to = applied.kubernetes_version, str(spec.kubernetes_version)
    _node_changes(plan, applied.nodes, after)
    _membership_rules(plan, applied.nodes, after)
    _version_rules(plan, supported_versions)
    _settings_rules(plan, applied.config, config)
    if plan.version_from != plan.version_to:
        plan.new_or_changed = [n.address for n in after]  # Docker must suit the new version
    if applied.customer is not None and applied.customer != spec.customer:
        plan.customer_changed = True
    _describe(plan, applied)
    _live_view(plan, live, applied.nodes, after)
    return plan


def _describe(plan: Plan, applied: Applied) -> None:
    """The plan's remaining restarts and notes: workers, labels, customer, certificates."""
    workers_added = [r["address"] for r in plan.add if "worker" in r["roles"]]
    if workers_added:
        plan.restarts.append(
            f"workers {', '.join(workers_added)}: ports checked, certificates deployed, kubelet, "
            "kube-proxy and nginx-proxy started; nothing restarts on the other nodes"
        )
    for row in plan.remove:
        plan.restarts.append(
            f"node {row['address']} ({row['roles']}): cordoned and deleted from Kubernetes, its "
            "containers removed and its Kubernetes directories cleaned"
        )
    if any("labels/taints" in r["change"] for r in plan.changed):
        plan.restarts.append("node labels and taints are synced through the API; no restart")
    if plan.customer_changed:
        plan.restarts.append(
            "customer access is configured again (namespace, service account, RBAC, "
            "kubeconfig) after rke up"
        )
    if plan.has_changes or plan.resume:
        plan.restarts.append("add-ons are applied again (RKE does so on every rke up)")
    if applied.first_expiry is not None:
        plan.certificates_first_expiry = applied.first_expiry.strftime("%Y-%m-%d")
    for note in applied.certificate_notes:
        plan.notes.append(f"{note}; rke up does not renew certificates: use rotate-certificates")
