"""Managed resources: multi-document manifests, checked whole before any object is applied.

A managed resource is recorded as ``resources/<name>.yaml`` on the state volume only after every
one of its objects was applied; the record holds the objects as applied (namespaces filled in).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import yaml
from pydantic import WithJsonSchema

from cluster_mgmt.atomic import fsync_dir
from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.kube import Kube, KubeError, describe
from cluster_mgmt.patterns import DNS_LABEL, TextRule
from cluster_mgmt.state import ClusterState

# Prefect refuses flow runs whose parameters exceed 512 KiB serialised (JSON escaping can grow
# YAML text): manifests are bounded well below that, with a message saying what to do.
MAX_MANIFEST_BYTES = 256 * 1024
RESOURCE_NAME = TextRule(
    DNS_LABEL,
    63,
    "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or "
    "digit (no '/', '.' or spaces)",
)
ResourceName = RESOURCE_NAME.stated()
# The form bounds characters; the flow bounds UTF-8 bytes (at least as many).
Manifest = Annotated[str, WithJsonSchema({"type": "string", "maxLength": MAX_MANIFEST_BYTES})]
CUSTOMER_RECORD = "cluster-mgmt-customer"  # the customer's access objects (cluster_mgmt.customer)
DEFAULT_NAMESPACE = "default"
API_VERSION = re.compile(r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+(?:(?:alpha|beta)[0-9]+)?")


class ManifestError(RefusedError):
    """A manifest or resource name that cannot be applied as given; nothing was applied."""


class ApplyError(ClusterMgmtError):
    """Applying (or deleting) stopped part way; the message reports object by object."""


def record_file(resource_name: str) -> str:
    """The state file recording a managed resource."""
    return f"resources/{resource_name}.yaml"


def check_resource_name(name: str, *, reserved_ok: bool = False) -> str:
    """`name` if it can name a managed resource (a DNS-1123 label, not reserved)."""
    if not isinstance(name, str) or not RESOURCE_NAME.matches(name):
        raise ManifestError(f"resource name {name!r} is not a DNS-1123 label: {RESOURCE_NAME.fix}")
    if name == CUSTOMER_RECORD and not reserved_ok:
        raise ManifestError(
            f"resource name {name!r} is reserved for the customer's access; pick another name"
        )
    return name


def parse_manifest(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML manifest, or ManifestError naming every problem."""
    size = len(text.encode())
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"manifest is {size} bytes, over the limit of {MAX_MANIFEST_BYTES}; split it into "
            "several managed resources"
        )
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest does not parse as YAML: {exc}") from None
    objects, problems = [], []
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue  # an empty document (`---` at the end)
        problem = _problem(doc)
        if problem:
            problems.append(f"document {index}: {problem}")
        else:
            objects.append(doc)
    if problems:
        raise ManifestError("manifest rejected, nothing applied: " + "; ".join(problems))
    if not objects:
        raise ManifestError("manifest holds no object; give at least one YAML document")
    return objects


def _problem(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "not a YAML mapping"
    missing = [k for k in ("apiVersion", "kind") if not isinstance(doc.get(k), str) or not doc[k]]
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        missing.append("metadata.name")
    if missing:
        return f"missing {', '.join(missing)}"
    if not API_VERSION.fullmatch(doc["apiVersion"]):
        return f"apiVersion {doc['apiVersion']!r} is not <group>/<version> or <version>"
    if doc["kind"].endswith("List"):
        return f"kind {doc['kind']}: give the items as separate documents"
    if doc["kind"] == "Secret" and doc["apiVersion"] == "v1":
        return (
            "kind Secret: a manifest travels as a flow parameter, which Prefect stores in plain "
            "text; create Secrets with the customer's own credentials instead"
        )
    return ""


def resolve(kube: Kube, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects as they will be applied, after discovery: every kind must be served by the
    cluster; namespaced objects get `default` when they name no namespace, cluster-scoped
    ones lose a stray namespace. ManifestError lists every unserved kind."""
    resolved, unserved = [], []
    for index, obj in enumerate(objects, start=1):
        kind = kube.kind(obj["apiVersion"], obj["kind"])
        if kind is None:
            unserved.append(f"document {index}: {obj['kind']} in {obj['apiVersion']}")
            continue
        meta = dict(obj["metadata"])
        if kind.namespaced:
            meta.setdefault("namespace", DEFAULT_NAMESPACE)
        else:
            meta.pop("namespace", None)
        resolved.append({**obj, "metadata": meta})
    if unserved:
        raise ManifestError(
            "the cluster does not serve these kinds, nothing applied: " + "; ".join(unserved)
        )
    return resolved


def _identity(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def apply_all(kube: Kube, objects: list[dict[str, Any]], what: str) -> list[str]:
    """Server-side apply each object in order; ApplyError reports each object's outcome."""
    done: list[str] = []
    for index, obj in enumerate(objects):
        try:
            kube.apply(obj)
        except KubeError as exc:
            raise ApplyError(
                _report(f"{what} not applied", done, obj, exc, objects[index + 1 :])
            ) from None
        done.append(describe(obj))
    return done


def delete_all(kube: Kube, objects: list[dict[str, Any]], what: str) -> list[str]:
    """Delete each object (last first); already gone is fine. ApplyError reports each one."""
    done: list[str] = []
    ordered = list(reversed(objects))
    for index, obj in enumerate(ordered):
        try:
            kube.delete(obj)
        except KubeError as exc:
            raise ApplyError(
                _report(f"{what} not deleted", done, obj, exc, ordered[index + 1 :])
            ) from None
        done.append(describe(obj))
    return done


def _report(head: str, done: list[str], failed: dict, exc: Exception, rest: list[dict]) -> str:
    parts = [f"{head}: {describe(failed)} failed: {exc}"]
    parts.append(f"done: {', '.join(done)}" if done else "done: none")
    if rest:
        parts.append(f"not attempted: {', '.join(describe(o) for o in rest)}")
    return "; ".join(parts) + "; the record is unchanged"


def stale(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects of `old` that `new` no longer holds (to delete when a record is replaced)."""
    kept = {_identity(o) for o in new}
    return [o for o in old if _identity(o) not in kept]


def read_record(cluster: ClusterState, resource_name: str) -> list[dict[str, Any]] | None:
    """The objects recorded for a managed resource, or None if there is no such record."""
    text = cluster.read_text(record_file(resource_name))
    return None if text is None else [d for d in yaml.safe_load_all(text) if d]


def write_record(cluster: ClusterState, resource_name: str, objects: list[dict[str, Any]]) -> None:
    """Record a managed resource (atomically, 0600)."""
    cluster.write_text(record_file(resource_name), yaml.safe_dump_all(objects, sort_keys=False))


def remove_record(cluster: ClusterState, resource_name: str) -> None:
    """Forget a managed resource: remove its record (durably)."""
    path = cluster.path(record_file(resource_name))
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def managed_names(cluster: ClusterState) -> list[str]:
    """The operator's managed resources (the customer's access record aside)."""
    return [n for n in cluster.resource_names() if n != CUSTOMER_RECORD]


def remove_file(cluster: ClusterState, filename: str) -> None:
    """Remove a state file (durably), e.g. the customer kubeconfig of a torn-down cluster."""
    path = cluster.path(filename)
    path.unlink(missing_ok=True)
    fsync_dir(os.path.dirname(path))
