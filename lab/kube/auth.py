"""Authentication (x509 client certificates, service-account tokens) and RBAC authorization."""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import NameOID

from lab.kube.store import Store

ISSUER = "kubernetes/serviceaccount"
RBAC = "rbac.authorization.k8s.io"


@dataclass
class User:
    name: str
    groups: list[str] = field(default_factory=list)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def user_from_cert(der: bytes | None, ca: x509.Certificate) -> User | None:
    """The user of a client certificate signed by the cluster CA (CN user, O groups)."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return None
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return None
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if not cn:
        return None
    return User(str(cn[0]), [str(o) for o in orgs] + ["system:authenticated"])


def sign_token(key_pem: str, namespace: str, secret: str, account: str, uid: str) -> str:
    """A legacy service-account token (JWT, RS256) as the token controller mints it."""
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    header = {"alg": "RS256", "kid": ""}
    claims = {
        "iss": ISSUER,
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": account,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "sub": f"system:serviceaccount:{namespace}:{account}",
    }
    signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    return f"{signing}.{_b64url(signature)}"


def user_from_token(token: str, key_pem: str, store: Store) -> User | None:
    """A legacy token is valid while its signature checks and its Secret still holds it."""
    try:
        head, body, sig = token.split(".")
        key = serialization.load_pem_private_key(key_pem.encode(), None).public_key()
        key.verify(_unb64url(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
        claims = json.loads(_unb64url(body))
    except (ValueError, InvalidSignature, TypeError):
        return None
    if claims.get("iss") != ISSUER:
        return None
    ns = claims.get("kubernetes.io/serviceaccount/namespace", "")
    secret = store.get("/secrets", ns, claims.get("kubernetes.io/serviceaccount/secret.name", ""))
    account = claims.get("kubernetes.io/serviceaccount/service-account.name", "")
    sa = store.get("/serviceaccounts", ns, account)
    if secret is None or sa is None:
        return None
    stored = (secret.get("data") or {}).get("token", "")
    if base64.b64decode(stored or "").decode(errors="replace") != token:
        return None
    if sa["metadata"].get("uid") != claims.get("kubernetes.io/serviceaccount/service-account.uid"):
        return None
    return User(
        f"system:serviceaccount:{ns}:{account}",
        ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
    )


def _matches(values: list[str], value: str) -> bool:
    return "*" in values or value in values


def _rule_allows(rule: dict, verb: str, group: str, resource: str, name: str, path: str) -> bool:
    if not _matches(rule.get("verbs") or [], verb):
        return False
    if path:
        return any(
            u == path or (u.endswith("*") and path.startswith(u[:-1]))
            for u in rule.get("nonResourceURLs") or []
        )
    if not rule.get("resources"):
        return False
    names = rule.get("resourceNames") or []
    return (
        _matches(rule.get("apiGroups") or [], group)
        and _matches(rule["resources"], resource)
        and (not names or name in names)
    )


def _subject_matches(subject: dict, user: User, namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user.name
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or namespace
        return user.name == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


def _role_rules(store: Store, ref: dict, namespace: str) -> list[dict]:
    if ref.get("kind") == "ClusterRole":
        role = store.get(f"{RBAC}/clusterroles", "", ref.get("name", ""))
    else:
        role = store.get(f"{RBAC}/roles", namespace, ref.get("name", ""))
    return (role or {}).get("rules") or []


def allowed(
    store: Store,
    user: User,
    verb: str,
    group: str = "",
    resource: str = "",
    namespace: str = "",
    name: str = "",
    path: str = "",
) -> bool:
    """The RBAC authorizer: system:masters always; ClusterRoleBindings; RoleBindings in the ns."""
    if "system:masters" in user.groups:
        return True
    if path and "system:authenticated" in user.groups and verb == "get":
        from lab.kube.resources import PUBLIC_PATHS

        if any(path == p or path.startswith(p + "/") for p in PUBLIC_PATHS):
            return True
    bindings = [(b, "") for b in store.list(f"{RBAC}/clusterrolebindings")]
    if namespace:
        bindings += [(b, namespace) for b in store.list(f"{RBAC}/rolebindings", namespace)]
    for binding, ns in bindings:
        if not any(_subject_matches(s, user, ns) for s in binding.get("subjects") or []):
            continue
        for rule in _role_rules(store, binding.get("roleRef") or {}, ns):
            if _rule_allows(rule, verb, group, resource, name, path):
                return True
    return False


def forbidden_message(
    user: User, verb: str, group: str, resource: str, namespace: str, name: str, path: str
) -> str:
    if path:
        return f'forbidden: User "{user.name}" cannot {verb} path "{path}"'
    subject = f'{resource} "{name}"' if name else resource
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (
        f'{subject} is forbidden: User "{user.name}" cannot {verb} resource "{resource}" '
        f'in API group "{group}" {where}'
    )
