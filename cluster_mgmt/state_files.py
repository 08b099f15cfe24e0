"""Is a file RKE wrote complete? Only complete files are ever promoted onto the volume.

RKE writes its files with plain writes (no temp file, no rename), so a kill can leave any
prefix of one. A prefix can still parse (a kubeconfig cut after ``client-key-data: LS0t`` is
valid YAML and valid base64), so parsing is not enough: every certificate and key in the file
must decode to a complete PEM object that ``cryptography`` loads.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import warnings
from typing import Any

import yaml

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

CA = "kube-ca"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?\r?\n-----END \1-----", re.DOTALL)


def load_json(data: bytes) -> Any:
    """The JSON document in ``data``, or None if it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def load_yaml(data: bytes) -> Any:
    """The YAML document in ``data``, or None if it is not YAML."""
    try:
        return yaml.load(data, Loader=SafeLoader)  # noqa: S506 - the safe loader, in C
    except (yaml.YAMLError, ValueError, RecursionError):
        return None


def _pem_blocks(pem: bytes) -> list[bytes] | None:
    """Each ``BEGIN``..``END`` block of ``pem``; None if there is none or any is cut (a BEGIN
    without its END, or the reverse), which a loader would silently skip."""
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(pem)]
    whole = len(blocks) == pem.count(b"-----BEGIN ") == pem.count(b"-----END ")
    return blocks if blocks and whole else None


def _certificate_loads(pem: bytes) -> bool:
    """Every PEM block is whole and a certificate that loads."""
    blocks = _pem_blocks(pem)
    if blocks is None:
        return False
    # RKE's CA has serial number 0 (client-go's self-signed CA), which cryptography warns about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return all(x509.load_pem_x509_certificate(block) for block in blocks)
        except ValueError:
            return False


def _key_loads(pem: bytes) -> bool:
    """Every PEM block is whole and the private key loads."""
    if _pem_blocks(pem) is None:
        return False
    try:
        serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _bundle_complete(bundle: Any) -> bool:
    """Every certificate and key of an RKE certificatesBundle loads (empty fields allowed)."""
    if not isinstance(bundle, dict):
        return False
    for entry in bundle.values():
        if not isinstance(entry, dict):
            return False
        cert, key = entry.get("certificatePEM") or "", entry.get("keyPEM") or ""
        if not isinstance(cert, str) or not isinstance(key, str):
            return False
        if cert and not _certificate_loads(cert.encode()):
            return False
        if key and not _key_loads(key.encode()):
            return False
    return True


def is_rkestate(data: bytes) -> bool:
    """Complete RKE state that holds the cluster's CA: without it, rke would mint a new one."""
    doc = load_json(data)
    if not isinstance(doc, dict):
        return False
    states = [doc.get(k) for k in ("desiredState", "currentState") if doc.get(k)]
    if not states or not all(isinstance(s, dict) for s in states):
        return False
    bundles = [s["certificatesBundle"] for s in states if "certificatesBundle" in s]
    if not all(_bundle_complete(b) for b in bundles):
        return False
    return any((b.get(CA) or {}).get("certificatePEM") for b in bundles)


def _decoded(value: Any) -> bytes | None:
    """A kubeconfig ``*-data`` field decoded (strict base64), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _named(doc: dict[str, Any], key: str, inner: str) -> dict[str, dict[str, Any]] | None:
    """``{name: entry[inner]}`` of a kubeconfig list such as ``clusters``; None if malformed."""
    items = doc.get(key)
    if not isinstance(items, list) or not items:
        return None
    found = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get(inner), dict):
            return None
        found[str(item.get("name", ""))] = item[inner]
    return found


def _cluster_complete(cluster: dict[str, Any]) -> bool:
    ca = _decoded(cluster.get("certificate-authority-data"))
    return bool(cluster.get("server")) and ca is not None and _certificate_loads(ca)


def _user_complete(user: dict[str, Any]) -> bool:
    """A client certificate with its key, or a token; nothing half there."""
    has_cert, has_key = "client-certificate-data" in user, "client-key-data" in user
    if has_cert or has_key:
        cert = _decoded(user.get("client-certificate-data"))
        key = _decoded(user.get("client-key-data"))
        return cert is not None and key is not None and _certificate_loads(cert) and _key_loads(key)
    return isinstance(user.get("token"), str) and bool(user["token"])


def is_kubeconfig(data: bytes) -> bool:
    """A complete kubeconfig: its context names a cluster with a server and a CA that loads,
    and a user whose credentials are whole."""
    doc = load_yaml(data)
    if not isinstance(doc, dict):
        return False
    clusters, users = _named(doc, "clusters", "cluster"), _named(doc, "users", "user")
    contexts = _named(doc, "contexts", "context")
    if clusters is None or users is None or contexts is None:
        return False
    if not all(_cluster_complete(c) for c in clusters.values()):
        return False
    if not all(_user_complete(u) for u in users.values()):
        return False
    current = contexts.get(str(doc.get("current-context", "")))
    return (
        current is not None and current.get("cluster") in clusters and current.get("user") in users
    )


def is_yaml_mapping(data: bytes) -> bool:
    """A YAML document whose top level is a mapping (cluster.yml)."""
    return isinstance(load_yaml(data), dict)
