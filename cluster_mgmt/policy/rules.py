"""The built-in rules: a YAML policy file parsed into typed rules that give a `Decision` locally.

The file format is documented at the top of `cluster_mgmt/policy.yaml`. Each rule type is a
pydantic model: unknown types or keys, and values of the wrong shape, fail at load with the
file, the rule and the key named.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cluster_mgmt.policy.decision import (
    CLUSTER,
    TEARDOWN,
    Decision,
    PolicyError,
    Severity,
    Violation,
    check_kind,
)

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent.parent / "policy.yaml"

Names = Annotated[list[StrictStr], Field(min_length=1)]
Count = Annotated[StrictInt, Field(ge=1)]
Spec = Mapping[str, Any]


class _Rule(BaseModel):
    """What every rule has; subclasses add their settings and `check`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = CLUSTER

    name: Annotated[StrictStr, Field(min_length=1)]
    type: str
    severity: Severity = "error"
    environments: Names | None = None  # None: everywhere
    description: StrictStr | None = None

    def applies(self, kind: str, environment: str) -> bool:
        scoped = self.environments is None or environment in self.environments
        return scoped and self.kind == kind

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        """Messages for each way `spec` breaks this rule (empty when it complies)."""
        raise NotImplementedError


def _nodes(spec: Spec) -> list[Mapping[str, Any]]:
    nodes = spec.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, Mapping) for n in nodes):
        raise PolicyError("spec has no list of nodes: pass ClusterSpec.model_dump(mode='json')")
    return nodes


class KubernetesVersions(_Rule):
    type: Literal["kubernetes-versions"]
    allowed: Names

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        version = spec.get("kubernetes_version")
        if not version:
            return ["kubernetes_version is not set: resolve it (ClusterSpec.with_version) first"]
        if version in self.allowed:
            return []
        return [
            f"kubernetes_version {version} is not allowed; use one of {', '.join(self.allowed)}"
        ]


class NetworkPlugins(_Rule):
    type: Literal["network-plugins"]
    allowed: Names

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        plugin = spec.get("network_plugin", "canal")
        if plugin in self.allowed:
            return []
        return [f"network_plugin {plugin} is not allowed; use one of {', '.join(self.allowed)}"]


class NodeCount(_Rule):
    type: Literal["node-count"]
    min: Count | None = None
    max: Count | None = None

    @model_validator(mode="after")
    def _bounds(self) -> NodeCount:
        if self.min is None and self.max is None:
            raise ValueError("key 'min or max' is required for a rule of type node-count")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"key 'min' ({self.min}) exceeds 'max' ({self.max})")
        return self

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        count = len(_nodes(spec))
        if self.min is not None and count < self.min:
            return [f"{count} nodes is fewer than the minimum of {self.min} in {environment}"]
        if self.max is not None and count > self.max:
            return [f"{count} nodes is more than the maximum of {self.max} in {environment}"]
        return []


class EtcdQuorum(_Rule):
    type: Literal["etcd-quorum"]
    min: Count = 3

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        etcd = sum("etcd" in n.get("roles", ()) for n in _nodes(spec))
        if etcd >= self.min and etcd % 2 == 1:
            return []
        wanted = f"an odd number of at least {self.min} nodes"
        return [f"{etcd} etcd nodes in {environment}: give etcd to {wanted}"]


class NodeAddresses(_Rule):
    type: Literal["node-addresses"]
    cidrs: list[IPvAnyNetwork] = []
    domains: list[StrictStr] = []

    @field_validator("domains")
    @classmethod
    def _normal(cls, domains: list[str]) -> list[str]:
        return [d.lower().strip(".") for d in domains]

    @model_validator(mode="after")
    def _some(self) -> NodeAddresses:
        if not self.cidrs and not self.domains:
            raise ValueError("key 'cidrs or domains' is required for a rule of type node-addresses")
        return self

    def _allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            host = address.lower().rstrip(".")
            return any(host == d or host.endswith("." + d) for d in self.domains)
        return any(ip in net for net in self.cidrs)

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        where = ", ".join(str(n) for n in (*self.cidrs, *self.domains))
        found = []
        for node in _nodes(spec):
            for key in ("address", "internal_address"):
                value = node.get(key)
                if value and not self._allowed(str(value)):
                    found.append(f"node {key} {value} is outside the allowed {where}")
        return found


class EtcdSnapshots(_Rule):
    type: Literal["etcd-snapshots"]
    max_interval_hours: Count | None = None
    min_retention_hours: Count | None = None

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        snaps = spec.get("etcd_snapshots") or {}
        if not snaps.get("enabled", True):
            return [f"etcd_snapshots must be enabled in {environment}"]
        found = []
        interval, retention = snaps.get("interval_hours", 6), snaps.get("retention_hours", 24)
        if self.max_interval_hours is not None and interval > self.max_interval_hours:
            found.append(
                f"etcd_snapshots.interval_hours {interval} exceeds {self.max_interval_hours} "
                f"in {environment}"
            )
        if self.min_retention_hours is not None and retention < self.min_retention_hours:
            found.append(
                f"etcd_snapshots.retention_hours {retention} is below "
                f"{self.min_retention_hours} in {environment}"
            )
        return found


class CustomerAccess(_Rule):
    type: Literal["customer-access"]
    allowed: Annotated[list[Literal["cluster-admin", "namespace-admin"]], Field(min_length=1)]

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        access = (spec.get("customer") or {}).get("access", "cluster-admin")
        if access in self.allowed:
            return []
        use = ", ".join(self.allowed)
        return [f"customer.access {access} is not allowed in {environment}; use {use}"]


class ProtectedEnvironments(_Rule):
    kind: ClassVar[str] = TEARDOWN
    type: Literal["protected-environments"]
    environments: Names  # required: where teardown is refused

    def check(self, environment: str, name: str, spec: Spec) -> list[str]:
        return [f"environment {environment} is protected: cluster {name} cannot be torn down"]


RULE_TYPES: dict[str, type[_Rule]] = {
    "kubernetes-versions": KubernetesVersions,
    "network-plugins": NetworkPlugins,
    "node-count": NodeCount,
    "etcd-quorum": EtcdQuorum,
    "node-addresses": NodeAddresses,
    "etcd-snapshots": EtcdSnapshots,
    "customer-access": CustomerAccess,
    "protected-environments": ProtectedEnvironments,
}
Rule = Annotated[
    KubernetesVersions
    | NetworkPlugins
    | NodeCount
    | EtcdQuorum
    | NodeAddresses
    | EtcdSnapshots
    | CustomerAccess
    | ProtectedEnvironments,
    Field(discriminator="type"),
]


class PolicyFile(BaseModel):
    """A policy file: exactly one key, `rules`."""

    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]


@dataclass(frozen=True)
class RuleSet:
    """The rules of one policy file, identified by the file's sha256."""

    path: Path
    version: str
    rules: tuple[_Rule, ...]

    def evaluate(self, kind: str, environment: str, name: str, spec: Spec) -> Decision:
        """The verdict on `spec`: denied iff an error-severity rule is broken."""
        check_kind(kind)
        start = time.monotonic()
        violations = tuple(
            Violation(rule.name, message, rule.severity)
            for rule in self.rules
            if rule.applies(kind, environment)
            for message in rule.check(environment, name, spec)
        )
        return Decision(
            allowed=not any(v.severity == "error" for v in violations),
            violations=violations,
            source=f"built-in {self.path}",
            version=self.version,
            elapsed_seconds=time.monotonic() - start,
        )


def load_rules(path: Path | None = None) -> RuleSet:
    """Parse and check a policy file (default: the one shipped with the package)."""
    path = Path(path or DEFAULT_POLICY_FILE)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"policy file {path} cannot be read: {exc.strerror}") from None
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {path} is not valid YAML: {exc}") from None
    try:
        rules = tuple(PolicyFile.model_validate(document).rules)
    except ValidationError as exc:
        raise PolicyError(_problem(path, document, exc.errors()[0])) from None
    names = [r.name for r in rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise PolicyError(f"policy file {path}: rule name {duplicate!r} is used twice")
    return RuleSet(path, hashlib.sha256(raw).hexdigest(), rules)


def _problem(path: Path, document: Any, error: Mapping[str, Any]) -> str:
    """One line naming the file, the rule and the key that is wrong, and how."""
    loc = list(error["loc"])
    if not loc or loc[0] != "rules" or not isinstance(document, dict):
        return f"policy file {path} must be a mapping with exactly one key, 'rules'"
    if len(loc) == 1:
        return f"policy file {path}: 'rules' must be a list of rules"
    raw = document["rules"][loc[1]]
    if not isinstance(raw, dict):
        return f"policy file {path}, rule #{loc[1] + 1}: a rule is a mapping with name and type"
    name = raw.get("name")
    label = f"rule {name!r}" if isinstance(name, str) and name else f"rule #{loc[1] + 1}"
    where = f"policy file {path}, {label}"
    kind, loc = raw.get("type"), loc[2:]
    if error["type"] == "union_tag_not_found":
        return f"{where}: key 'type' is missing; known types: {', '.join(RULE_TYPES)}"
    if error["type"] == "union_tag_invalid":
        return (
            f"{where}: key 'type' has unknown rule type {kind!r}; "
            f"known types: {', '.join(RULE_TYPES)}"
        )
    loc = loc[1:] if loc and loc[0] == kind else loc
    key = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key {key!r}; a rule of type {kind} takes {', '.join(_keys(kind))}"
    if error["type"] == "missing":
        return f"{where}: key {key!r} is required for a rule of type {kind}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: key {key!r}: {message}" if key else f"{where}: {message}"


def _keys(kind: str) -> list[str]:
    return [k for k in RULE_TYPES[kind].model_fields]
