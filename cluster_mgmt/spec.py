"""The cluster request: a validated, self-describing specification of one RKE cluster."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

ENVIRONMENT_RE = re.compile(r"^[a-z0-9]{1,20}$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
KUBERNETES_VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+-rancher\d+-\d+$")

Role = Literal["controlplane", "etcd", "worker"]
NetworkPlugin = Literal["canal", "flannel", "calico", "weave", "none"]


class SpecError(ValueError):
    """A request that cannot be served as written; the message names the field and the fix."""


def _environment(value: str) -> str:
    if not ENVIRONMENT_RE.fullmatch(value):
        raise ValueError(
            f"environment {value!r} must be 1-20 lowercase letters and digits (no dashes)"
        )
    return value


def _cluster_name(value: str) -> str:
    if len(value) > 40 or not DNS_LABEL_RE.fullmatch(value):
        raise ValueError(
            f"name {value!r} must be a DNS-1123 label of at most 40 characters: lowercase "
            "letters, digits and '-', starting and ending with a letter or digit"
        )
    return value


Environment = Annotated[str, AfterValidator(_environment)]
ClusterName = Annotated[str, AfterValidator(_cluster_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_host(value: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(value) or value.replace(".", "").isdigit():
        raise ValueError(
            f"{field} {value!r} is neither an IP address nor a hostname; "
            "use letters, digits, dashes and dots only"
        )
    return value.lower()


def _check_label_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        raise ValueError(f"label key {key!r}: the prefix must be a lowercase DNS subdomain")
    if not LABEL_NAME_RE.fullmatch(name):
        raise ValueError(
            f"label key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )


class Taint(_Strict):
    """A Kubernetes taint placed on a node."""

    key: str = Field(description="Taint key, a valid label key.")
    value: str = Field(default="", description="Taint value, a valid label value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        description="What the taint does to pods that do not tolerate it."
    )

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        _check_label_key(key)
        return key

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if value and not LABEL_NAME_RE.fullmatch(value):
            raise ValueError(f"taint value {value!r} is not a valid label value")
        return value


class NodeSpec(_Strict):
    """One host of the cluster and the roles it plays."""

    address: str = Field(description="IP address or hostname RKE reaches the node on over SSH.")
    roles: list[Role] = Field(min_length=1, description="controlplane, etcd and/or worker.")
    user: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="SSH user; defaults to the node-ssh-access block's user.",
    )
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    internal_address: str | None = Field(
        default=None, description="Address for traffic inside the cluster."
    )
    hostname_override: str | None = Field(
        default=None, description="Kubernetes node name; a lowercase DNS subdomain."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes node labels.")
    taints: list[Taint] = Field(default_factory=list, description="Kubernetes node taints.")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_host(value, "address")

    @field_validator("internal_address")
    @classmethod
    def _internal_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value, "internal_address")

    @field_validator("hostname_override")
    @classmethod
    def _hostname_override(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(value)):
            raise ValueError(
                f"hostname_override {value!r} must be a lowercase DNS subdomain "
                "(letters, digits, '-' and '.')"
            )
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, roles: list[str]) -> list[str]:
        if len(set(roles)) != len(roles):
            raise ValueError("roles lists a role twice; list each role once")
        return roles

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            _check_label_key(key)
            if value and not LABEL_NAME_RE.fullmatch(value):
                raise ValueError(
                    f"label {key}={value!r}: values are at most 63 letters, digits, '-', '_' "
                    "or '.', starting and ending with a letter or digit"
                )
        return labels

    @property
    def hostname(self) -> str:
        """The node's Kubernetes name, as RKE derives it."""
        return (self.hostname_override or self.address).lower()


class EtcdSnapshots(_Strict):
    """Recurring etcd snapshots taken by RKE on every etcd node."""

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

    namespace: str = Field(default="customer", max_length=63, pattern=DNS_LABEL_RE.pattern)
    service_account: str = Field(
        default="customer-admin", max_length=63, pattern=DNS_LABEL_RE.pattern
    )
    access: Literal["cluster-admin", "namespace-admin"] = Field(default="cluster-admin")


def expand_hosts(hosts: list[str]) -> list[NodeSpec]:
    """Roles for the original service's `hosts` shorthand (see design.md)."""
    if len(hosts) < 3:
        roles = [["controlplane", "etcd", "worker"]] + [["worker"]] * (len(hosts) - 1)
    else:
        control = 3 if len(hosts) >= 5 else 1
        roles = [["controlplane", "etcd"]] * control + [["worker"]] * (len(hosts) - control)
    return [NodeSpec(address=h, roles=r) for h, r in zip(hosts, roles, strict=True)]


class ClusterSpec(_Strict):
    """A request for one RKE cluster; `environment` and `name` identify it."""

    environment: Environment = Field(
        default="default",
        description="Environment: lowercase letters and digits, at most 20 characters.",
    )
    name: ClusterName = Field(
        description="Cluster name: a DNS-1123 label of at most 40 characters."
    )
    nodes: list[NodeSpec] | None = Field(
        default=None, min_length=1, max_length=100, description="The cluster's nodes and roles."
    )
    hosts: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Shorthand for nodes: roles are assigned by position.",
    )
    kubernetes_version: str | None = Field(
        default=None, description="RKE Kubernetes version; defaults to rke-settings' default."
    )
    network_plugin: NetworkPlugin = Field(default="canal", description="CNI plugin.")
    etcd_snapshots: EtcdSnapshots = Field(default_factory=EtcdSnapshots)
    customer: CustomerAccess = Field(default_factory=CustomerAccess)

    @field_validator("kubernetes_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not KUBERNETES_VERSION_RE.fullmatch(value):
            raise ValueError(
                f"kubernetes_version {value!r} is not an RKE version such as 'v1.30.5-rancher1-1'"
            )
        return value

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
    def cluster_name(self) -> str:
        """RKE's `cluster_name`: unambiguous because environments contain no dash."""
        return f"{self.environment}-{self.name}"

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
