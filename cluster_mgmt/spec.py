"""The cluster request: a validated, self-describing specification of one RKE cluster.

Every rule JSON Schema can state is also in the model's JSON schema, which Prefect makes the
deployments' parameter schema: the server refuses a bad request before a flow run exists.
What JSON Schema cannot say (duplicates across nodes, etcd counts, retention against interval)
the validators below check when the flow starts, before any side effect.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.identity import ClusterId, ClusterName, Environment
from cluster_mgmt.patterns import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    K8S_NAME,
    TextRule,
    anchored,
    omit_null,
)

_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}"
_IPV6_CHARS = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"  # the exact parse is ipaddress's, in Python
_HOST_LABEL = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
# The last label holds a letter, so no hostname reads as a malformed IPv4 address.
HOSTNAME = TextRule(
    rf"(?:{_HOST_LABEL}\.)*(?=[-0-9]*[A-Za-z]){_HOST_LABEL}",
    253,
    "it is neither an IP address nor a hostname; use letters, digits, '-' and '.' only",
)
ADDRESS_SCHEMA = {
    "type": "string",
    "pattern": anchored(f"{_IPV4}|{_IPV6_CHARS}|{HOSTNAME.body}"),
    "maxLength": HOSTNAME.max_length,
}
SUBDOMAIN = TextRule(
    DNS_SUBDOMAIN,
    253,
    "use a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', each part "
    "starting and ending with a letter or digit, at most 253 characters",
)
QUALIFIED_NAME = TextRule(
    rf"(?:(?=[^/]{{1,253}}/){DNS_SUBDOMAIN}/)?{K8S_NAME}",
    253 + 1 + 63,
    "use [prefix/]name: an optional lowercase DNS subdomain prefix (at most 253 characters) "
    "and a name of 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter "
    "or digit",
)
LABEL_VALUE = TextRule(
    f"(?:{K8S_NAME})?",
    63,
    "use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
    "digit (or leave it empty)",
)
USER = TextRule(
    r"[a-z_][a-z0-9_-]{0,31}",
    32,
    "use a login name: a lowercase letter or '_', then lowercase letters, digits, '_' or '-'",
)
KUBERNETES_VERSION = TextRule(
    r"v[0-9]+\.[0-9]+\.[0-9]+-rancher[0-9]+-[0-9]+",
    64,
    "use an RKE version such as 'v1.30.5-rancher1-1'",
)
K8S_OBJECT_NAME = TextRule(
    DNS_LABEL,
    63,
    "use a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending "
    "with a letter or digit",
)

Role = Literal["controlplane", "etcd", "worker"]
NetworkPlugin = Literal["canal", "flannel", "calico", "weave", "none"]


class SpecError(ClusterMgmtError, ValueError):
    """A request that cannot be served as written; the message names the field and the fix."""


def _check_address(value: str, field: str) -> str:
    """An IP address (normalised; no IPv6 zone id) or a hostname (lowercased)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return HOSTNAME.check(value, field).lower()
    if getattr(ip, "scope_id", None):
        raise ValueError(
            f"{field} {value!r} carries an IPv6 zone id; give the address without '%{ip.scope_id}'"
        )
    return str(ip)


def _address(field: str) -> Any:
    return Annotated[
        str,
        AfterValidator(lambda value: _check_address(value, field)),
        WithJsonSchema(ADDRESS_SCHEMA),
    ]


def _labels(key_rule: TextRule, value_rule: TextRule, what: str) -> Any:
    """A string-to-string mapping whose keys and values keep their rules."""
    return Annotated[
        dict[key_rule.type(f"{what} key"), value_rule.type(f"{what} value")],
        WithJsonSchema(
            {
                "type": "object",
                "propertyNames": key_rule.json_schema(),
                "additionalProperties": value_rule.json_schema(),
            }
        ),
    ]


def _optional(description: str, schema: dict[str, Any] | None = None, **constraints: Any) -> Any:
    """An optional field shown in the UI as a plain field (see `omit_null`)."""

    def extra(field_schema: dict[str, Any]) -> None:
        omit_null(field_schema)
        field_schema.update(schema or {})

    return Field(default=None, description=description, json_schema_extra=extra, **constraints)


Address = _address("address")
InternalAddress = _address("internal_address")
HostAddress = _address("hosts")
HostnameOverride = SUBDOMAIN.type("hostname_override")
User = USER.type("user")
Labels = _labels(QUALIFIED_NAME, LABEL_VALUE, "label")
TaintKey = QUALIFIED_NAME.type("taint key")
TaintValue = LABEL_VALUE.type("taint value")
KubernetesVersion = KUBERNETES_VERSION.type("kubernetes_version")
Namespace = K8S_OBJECT_NAME.type("customer.namespace")
ServiceAccount = K8S_OBJECT_NAME.type("customer.service_account")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Taint(_Strict):
    """A Kubernetes taint placed on a node."""

    key: TaintKey = Field(description="Taint key, [prefix/]name as for label keys.")
    value: TaintValue = Field(
        default="", description="Taint value, as for label values; may be empty."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        description="What the taint does to pods that do not tolerate it."
    )


class NodeSpec(_Strict):
    """One host of the cluster and the roles it plays."""

    address: Address = Field(description="IP address or hostname RKE reaches the node on over SSH.")
    roles: list[Role] = Field(
        min_length=1,
        description="controlplane, etcd and/or worker, each at most once.",
        json_schema_extra={"uniqueItems": True},
    )
    user: User | None = _optional("SSH user; defaults to the node-ssh-access block's user.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    internal_address: InternalAddress | None = _optional(
        "Address for traffic inside the cluster (etcd peers among others)."
    )
    hostname_override: HostnameOverride | None = _optional(
        "Kubernetes node name; a lowercase RFC 1123 subdomain."
    )
    labels: Labels = Field(default_factory=dict, description="Kubernetes node labels.")
    taints: list[Taint] = Field(default_factory=list, description="Kubernetes node taints.")

    @field_validator("roles")
    @classmethod
    def _roles(cls, roles: list[str]) -> list[str]:
        if len(set(roles)) != len(roles):
            raise ValueError("roles lists a role twice; list each role once")
        return roles

    @property
    def hostname(self) -> str:
        """The node's Kubernetes name, as RKE derives it."""
        return (self.hostname_override or self.address).lower()


class EtcdSnapshots(_Strict):
    """Recurring etcd snapshots taken by RKE on every etcd node."""

    model_config = ConfigDict(title="Etcd Snapshots")  # the UI form's label, not the class name

    enabled: bool = Field(default=True, description="Take recurring snapshots.")
    interval_hours: int = Field(default=6, ge=1, le=24, description="Hours between snapshots.")
    retention_hours: int = Field(default=24, ge=1, le=24 * 30, description="Hours kept.")

    @model_validator(mode="after")
    def _retention(self) -> EtcdSnapshots:
        if self.retention_hours < self.interval_hours:
            raise ValueError(
                f"etcd_snapshots.retention_hours ({self.retention_hours}) is shorter than "
                f"interval_hours ({self.interval_hours}); keep at least one interval"
            )
        return self

    @property
    def retention_count(self) -> int:
        """RKE's `retention`: how many snapshots cover `retention_hours`."""
        return -(-self.retention_hours // self.interval_hours)


class CustomerAccess(_Strict):
    """What the customer receives once the cluster is up."""

    model_config = ConfigDict(title="Customer Access")

    namespace: Namespace = Field(
        default="customer", description="Namespace the customer's service account works in."
    )
    service_account: ServiceAccount = Field(
        default="customer-admin", description="Service account behind the customer kubeconfig."
    )
    access: Literal["cluster-admin", "namespace-admin"] = Field(default="cluster-admin")


def expand_hosts(hosts: list[str]) -> list[NodeSpec]:
    """Nodes for the `hosts` shorthand: with fewer than three hosts the first does everything;
    else the first (the first three from five hosts on) run controlplane+etcd, the rest work."""
    if len(hosts) < 3:
        roles = [["controlplane", "etcd", "worker"]] + [["worker"]] * (len(hosts) - 1)
    else:
        control = 3 if len(hosts) >= 5 else 1
        roles = [["controlplane", "etcd"]] * control + [["worker"]] * (len(hosts) - control)
    return [NodeSpec(address=h, roles=r) for h, r in zip(hosts, roles, strict=True)]


def _given(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"type": "array"}}}


# `nodes` or `hosts`, exactly one. Said with if/then/else rather than oneOf: Prefect's form
# would render an object-level oneOf as a choice between two bare sub-forms.
NODES_OR_HOSTS = {
    "if": _given("nodes"),
    "then": {"not": _given("hosts")},
    "else": _given("hosts"),
}


class ClusterSpec(_Strict):
    """A request for one RKE cluster; `environment` and `name` identify it."""

    model_config = ConfigDict(json_schema_extra=NODES_OR_HOSTS)

    environment: Environment = Field(
        default="default",
        description="Environment: lowercase letters and digits, at most 20 characters.",
    )
    name: ClusterName = Field(
        description="Cluster name: a DNS-1123 label of at most 40 characters."
    )
    nodes: list[NodeSpec] | None = _optional(
        "The cluster's nodes and their roles (or give hosts).", min_length=1, max_length=100
    )
    hosts: list[HostAddress] | None = _optional(
        "Shorthand for nodes: roles are assigned by position (or give nodes).",
        {"uniqueItems": True},
        min_length=1,
        max_length=100,
    )
    kubernetes_version: KubernetesVersion | None = _optional(
        "RKE Kubernetes version; defaults to the rke-settings block's default."
    )
    network_plugin: NetworkPlugin = Field(default="canal", description="CNI plugin.")
    etcd_snapshots: EtcdSnapshots = Field(default_factory=EtcdSnapshots)
    customer: CustomerAccess = Field(default_factory=CustomerAccess)

    @model_validator(mode="after")
    def _topology(self) -> ClusterSpec:
        if self.hosts is not None and self.nodes is not None:
            raise ValueError("give either hosts (shorthand) or nodes, not both")
        if self.hosts is None and self.nodes is None:
            raise ValueError("nodes is required: list the cluster's hosts and their roles")
        if self.hosts is not None:
            self.nodes = expand_hosts(self.hosts)
            self.hosts = None
        _check_topology(self.nodes)
        return self

    @property
    def cluster_id(self) -> ClusterId:
        """The cluster's identity and the keys derived from it."""
        return ClusterId(self.environment, self.name)

    @property
    def cluster_name(self) -> str:
        """RKE's `cluster_name`."""
        return self.cluster_id.rke_cluster_name

    def spec_hash(self) -> str:
        """A stable digest of the normalised request."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def with_version(self, supported: list[str], default: str) -> ClusterSpec:
        """This spec with its Kubernetes version resolved and checked against what RKE supports."""
        version = self.kubernetes_version or default
        if version not in supported:
            raise SpecError(
                f"kubernetes_version {version!r} is not supported by the configured RKE; "
                f"choose one of {', '.join(supported)}"
            )
        if self.network_plugin == "weave" and _minor(version) >= (1, 30):
            raise SpecError(
                f"network_plugin 'weave' is not available for Kubernetes {version} (RKE removed "
                "it for >= 1.30); choose canal, flannel or calico"
            )
        return self.model_copy(update={"kubernetes_version": version})


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor)


def _check_topology(nodes: list[NodeSpec]) -> None:
    for attribute, what in (("address", "address"), ("hostname", "hostname")):
        seen: set[str] = set()
        for node in nodes:
            value = getattr(node, attribute)
            if value in seen:
                raise ValueError(
                    f"nodes: {what} {value!r} appears twice; every node needs its own {what}"
                )
            seen.add(value)
    counts = {
        role: sum(role in n.roles for n in nodes) for role in ("controlplane", "etcd", "worker")
    }
    if counts["etcd"] == 0:
        raise ValueError("nodes: no node has the etcd role; give etcd to 1, 3 or 5 nodes")
    if counts["etcd"] % 2 == 0:
        raise ValueError(
            f"nodes: {counts['etcd']} etcd nodes cannot keep quorum; use an odd count (1, 3 or 5)"
        )
    if counts["controlplane"] == 0:
        raise ValueError("nodes: no node has the controlplane role; give it to at least one node")
    if counts["worker"] == 0:
        raise ValueError("nodes: no node has the worker role; give it to at least one node")
