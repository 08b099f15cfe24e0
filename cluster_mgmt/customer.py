"""The customer's access to a cluster: namespace, service account, RBAC, token, kubeconfig.

Every object is server-side applied as `cluster-mgmt`, so a rerun converges. The token comes from
an explicit `kubernetes.io/service-account-token` Secret (Kubernetes 1.24 and later create none on
their own); a token is adopted only once a request made with it succeeded, and other token
Secrets of the account are deleted (revoking their tokens) only after the one in use is stored.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.kube import Kind, Kube, KubeError, connect, current_context
from cluster_mgmt.manifests import CUSTOMER_RECORD, read_record, write_record
from cluster_mgmt.phases import Phase
from cluster_mgmt.redact import register_secret
from cluster_mgmt.spec import CustomerAccess
from cluster_mgmt.state import ClusterState, Status

MANAGED_BY = {"app.kubernetes.io/managed-by": "cluster-mgmt"}
TOKEN_LABEL = "cluster-mgmt.io/customer-token"  # noqa: S105 - a label key, value: the account
TOKEN_TYPE = "kubernetes.io/service-account-token"  # noqa: S105 - a Secret type
TOKEN_WAIT_SECONDS = 30.0
STEP_FAILED = "configure step '"  # how a configuration failure starts its message
RBAC = "rbac.authorization.k8s.io/v1"
KINDS = {
    k.kind: k
    for k in (
        Kind("v1", "Namespace", "namespaces", False),
        Kind("v1", "ServiceAccount", "serviceaccounts", True),
        Kind("v1", "Secret", "secrets", True),
        Kind(RBAC, "RoleBinding", "rolebindings", True),
        Kind(RBAC, "ClusterRoleBinding", "clusterrolebindings", False),
    )
}


class ConfigureError(ClusterMgmtError):
    """A configuration step failed; the message names the step."""


@contextmanager
def step(name: str) -> Iterator[None]:
    """Name the step in any Kubernetes API failure inside it."""
    try:
        yield
    except KubeError as exc:
        raise ConfigureError(f"{STEP_FAILED}{name}' failed: {exc}") from None


def configurable(cluster: ClusterState, status: Status | None) -> None:
    """Refuse (RefusedError) to configure a cluster RKE has not brought up: only a READY
    cluster, or one whose configuration failed or was interrupted, may be (re)configured."""
    where = f"cluster {cluster.environment}/{cluster.name}"
    if status is None or cluster.read_text("kube_config_cluster.yml") is None:
        raise RefusedError(f"{where} has no admin kubeconfig: provision it first")
    failed_here = status.phase == Phase.FAILED and STEP_FAILED in status.message
    if status.phase not in (Phase.READY, Phase.CONFIGURING) and not failed_here:
        raise RefusedError(
            f"{where} is {status.phase} ({status.message}); only a READY cluster or one whose "
            "configuration failed can be configured: run provision-cluster again to resume it"
        )


def access_manifests(customer: CustomerAccess) -> list[dict[str, Any]]:
    """Namespace, service account and binding that give the customer its access."""
    ns, sa = customer.namespace, customer.service_account
    meta = {"labels": dict(MANAGED_BY)}
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": ns}
    if customer.access == "cluster-admin":
        binding = {
            "apiVersion": RBAC,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"cluster-mgmt.{ns}.{sa}", **meta},
            "roleRef": {"apiGroup": RBAC[:-3], "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [subject],
        }
    else:
        binding = {
            "apiVersion": RBAC,
            "kind": "RoleBinding",
            "metadata": {"name": f"cluster-mgmt.{sa}", "namespace": ns, **meta},
            "roleRef": {"apiGroup": RBAC[:-3], "kind": "ClusterRole", "name": "admin"},
            "subjects": [subject],
        }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, **meta}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": ns, **meta},
        },
        binding,
    ]


def record_access(cluster: ClusterState, customer: CustomerAccess) -> None:
    """Record the access the spec asks for (before applying it, so that configure-cluster can
    resume a configuration that failed before any object was applied)."""
    write_record(cluster, CUSTOMER_RECORD, access_manifests(customer))


def has_recorded_access(cluster: ClusterState) -> bool:
    """True once a provision recorded the customer's access (clusters provisioned before the
    service configured customers have none: their next provision configures them)."""
    return CUSTOMER_RECORD in cluster.resource_names()


def recorded_access(cluster: ClusterState) -> CustomerAccess:
    """The customer access recorded for the cluster (RefusedError if none is)."""
    objects = read_record(cluster, CUSTOMER_RECORD)
    if not objects:
        raise RefusedError(
            f"cluster {cluster.environment}/{cluster.name} has no recorded customer access; "
            "run provision-cluster again with its spec"
        )
    by_kind = {o["kind"]: o for o in objects}
    account = by_kind["ServiceAccount"]["metadata"]
    return CustomerAccess(
        namespace=account["namespace"],
        service_account=account["name"],
        access="cluster-admin" if "ClusterRoleBinding" in by_kind else "namespace-admin",
    )


def path_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return KINDS[obj["kind"]].path(meta.get("namespace", ""), meta["name"])


def apply_access(kube: Kube, customer: CustomerAccess) -> None:
    """Apply the namespace, service account and binding, each its own named step."""
    for obj in access_manifests(customer):
        with step(obj["kind"]):
            kube.apply(obj, path_of(obj))


@dataclass(frozen=True)
class Credentials:
    """The customer's token Secret and kubeconfig (never printed: `repr` hides them)."""

    secret: str
    kubeconfig: str = field(repr=False)
    new: bool = False
    others: tuple[str, ...] | None = None  # the account's other token Secrets, if listed


def endpoint(admin_kubeconfig: str) -> tuple[str, str]:
    """Server URL and CA data of the cluster, from the admin kubeconfig's current context."""
    cluster, _ = current_context(yaml.safe_load(admin_kubeconfig))
    return cluster["server"], cluster["certificate-authority-data"]


def customer_kubeconfig(
    cluster_name: str, server: str, ca_data: str, customer: CustomerAccess, token: str
) -> str:
    """A kubeconfig for the customer's service account, defaulting to its namespace."""
    user = f"{customer.service_account}@{cluster_name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": user,
                "context": {"cluster": cluster_name, "user": user, "namespace": customer.namespace},
            }
        ],
        "current-context": user,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def stored_token(kubeconfig: str | None) -> str | None:
    """The token of a customer kubeconfig, if any."""
    try:
        doc = yaml.safe_load(kubeconfig or "") or {}
        return doc["users"][0]["user"]["token"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def _token(secret: dict[str, Any]) -> str | None:
    value = (secret.get("data") or {}).get("token")
    if not value:
        return None
    token = base64.b64decode(value).decode()
    register_secret(token)
    return token


def token_secrets(kube: Kube, customer: CustomerAccess) -> list[dict[str, Any]]:
    """The account's token Secrets made by this service, newest first."""
    listing = kube.call(
        "GET",
        KINDS["Secret"].path(customer.namespace),
        query={"labelSelector": f"{TOKEN_LABEL}={customer.service_account}"},
    )
    items = [i for i in listing.get("items", []) if i.get("type") == TOKEN_TYPE]
    return sorted(items, key=lambda i: i["metadata"].get("creationTimestamp", ""), reverse=True)


def works(kubeconfig: str, customer: CustomerAccess) -> bool:
    """True if the kubeconfig's token is accepted (it reads its own service account)."""
    account = KINDS["ServiceAccount"].path(customer.namespace, customer.service_account)
    with connect(kubeconfig) as kube:
        try:
            kube.call("GET", account)
        except KubeError as exc:
            if exc.status in (401, 403):
                return False
            raise
    return True


def wait_for_token(kube: Kube, path: str, timeout: float = TOKEN_WAIT_SECONDS) -> str:
    """The token Kubernetes' token controller puts into the Secret at `path` (bounded wait)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        secret = kube.get(path)
        if secret is None:
            raise KubeError(f"token Secret {path} disappeared (its service account was replaced?)")
        token = _token(secret)
        if token:
            return token
        if time.monotonic() > deadline:
            raise KubeError(
                f"no token in {path} after {timeout:.0f} s: is the controller manager's token "
                "controller running?"
            )
        time.sleep(delay)
        delay = min(delay + 0.05, 0.5)


def new_token_secret(customer: CustomerAccess) -> dict[str, Any]:
    """A fresh token Secret for the account, with a unique name."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TOKEN_TYPE,
        "metadata": {
            "name": f"{customer.service_account}-token-{secrets.token_hex(3)}",
            "namespace": customer.namespace,
            "labels": {**MANAGED_BY, TOKEN_LABEL: customer.service_account},
            "annotations": {"kubernetes.io/service-account.name": customer.service_account},
        },
    }


def ensure_credentials(
    kube: Kube,
    admin_kubeconfig: str,
    cluster_name: str,
    customer: CustomerAccess,
    stored: str | None,
    *,
    rotate: bool = False,
) -> Credentials:
    """Working credentials for the customer: the stored ones while their Secret holds them,
    else the newest token Secret left by an earlier run, else (and always when `rotate`) a
    new token Secret. A token is adopted only after a request made with it succeeded."""
    server, ca_data = endpoint(admin_kubeconfig)

    def kubeconfig(token: str) -> str:
        return customer_kubeconfig(cluster_name, server, ca_data, customer, token)

    with step("token secret"):
        found = None if rotate else token_secrets(kube, customer)
    names = None if found is None else [s["metadata"]["name"] for s in found]
    current = stored_token(stored)
    for secret in sorted(found or [], key=lambda s: _token(s) != current):
        token, name = _token(secret), secret["metadata"]["name"]
        if token is None:
            continue
        config = kubeconfig(token)
        with step("token check"):
            if works(config, customer):
                others = tuple(n for n in names or [] if n != name)
                return Credentials(name, config, new=config != stored, others=others)
    obj = new_token_secret(customer)
    path = path_of(obj)
    with step("token secret"):
        kube.apply(obj, path)
    with step("token"):
        config = kubeconfig(wait_for_token(kube, path))
    with step("token check"):
        if not works(config, customer):
            raise KubeError(f"the new token of {path} is refused by the cluster")
    # after a rotation nothing was listed (None): the old Secrets are listed when revoked
    others = None if names is None else tuple(names)
    return Credentials(obj["metadata"]["name"], config, new=True, others=others)


def revoke_other_tokens(
    kube: Kube, customer: CustomerAccess, credentials: Credentials
) -> list[str]:
    """Delete the account's token Secrets other than the one in use (revoking their tokens);
    their names. Call it only once `credentials` are stored."""
    with step("revoke old tokens"):
        others = credentials.others
        if others is None:
            listed = token_secrets(kube, customer)
            others = tuple(n for s in listed if (n := s["metadata"]["name"]) != credentials.secret)
        for name in others:
            kube.delete({}, KINDS["Secret"].path(customer.namespace, name))
    return list(others)
