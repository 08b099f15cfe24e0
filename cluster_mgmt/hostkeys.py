"""SSH keys and host keys: the client's private key, known_hosts, and the host-key policy.

Plain Python (paramiko, cryptography), no Prefect. No key material ever reaches an error.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from paramiko.hostkeys import HostKeyEntry, HostKeys

from cluster_mgmt.errors import ClusterMgmtError

ACCEPTED_KEY_TYPES = (
    "ed25519, ecdsa (nistp256/384/521) or rsa, unencrypted, in OpenSSH or PEM format"
)
# known_hosts key type -> host key algorithms that present it
_HOSTKEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


class SshInputError(ClusterMgmtError):
    """Unusable SSH input (private key, host-key policy); says what to fix, never the key."""


class HostKeyError(ClusterMgmtError):
    """A node's host key is not trusted: unknown, changed or revoked; says what to do."""


class HostKeyPolicy(StrEnum):
    """What to do with a node whose host key is not in any known_hosts text."""

    REJECT = "reject"
    ACCEPT_NEW = "accept-new"


# --- private key -------------------------------------------------------------------------------


def load_private_key(text: str) -> paramiko.PKey:
    """Parse an unencrypted ed25519, ecdsa or rsa private key (OpenSSH or PEM/PKCS#8 format).

    Raises SshInputError naming the accepted types; the message never contains the key.
    """
    data = text.replace("\r\n", "\n").strip().encode() + b"\n"
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        elif b"PRIVATE KEY-----" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            raise ValueError("no PEM armour")
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise SshInputError(
            "the node-ssh-access private key is encrypted; store an unencrypted key "
            f"({ACCEPTED_KEY_TYPES})"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SshInputError(
            f"the node-ssh-access private key cannot be parsed; expected {ACCEPTED_KEY_TYPES}"
        ) from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        cls: type[paramiko.PKey] = paramiko.Ed25519Key
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        cls = paramiko.ECDSAKey
    elif isinstance(key, rsa.RSAPrivateKey):
        cls = paramiko.RSAKey
    else:
        raise SshInputError(
            f"the node-ssh-access private key has an unsupported type; expected {ACCEPTED_KEY_TYPES}"
        )
    openssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    try:
        return cls.from_private_key(io.StringIO(openssh))
    except (paramiko.SSHException, ValueError):
        raise SshInputError(
            f"the node-ssh-access private key cannot be loaded; expected {ACCEPTED_KEY_TYPES}"
        ) from None


# --- known_hosts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownKey:
    """One known_hosts entry: host patterns, the key, and whether it is marked @revoked."""

    patterns: tuple[str, ...]
    key: paramiko.PKey
    revoked: bool


def parse_known_hosts(*texts: str) -> list[KnownKey]:
    """Entries of known_hosts texts; comments, @cert-authority and unusable lines are skipped."""
    entries: list[KnownKey] = []
    for text in texts:
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            revoked = False
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                if marker != "@revoked":
                    continue  # @cert-authority: host certificates are not used here
                revoked = True
                line = line.strip()
            try:
                entry = HostKeyEntry.from_line(line)
            except Exception:  # noqa: BLE001 - an unusable line is skipped, as ssh does
                entry = None
            if entry is not None and entry.key is not None:
                entries.append(KnownKey(tuple(entry.hostnames), entry.key, revoked))
    return entries


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            return HostKeys.hash_host(name, pattern) == pattern
        except (ValueError, AssertionError):  # malformed salt
            return False
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, flags=re.IGNORECASE) is not None


def host_matches(patterns: Sequence[str], name: str) -> bool:
    """Whether `name` matches the patterns (hashed, wildcards, `!` negation) as ssh does."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern_matches(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            matched = True
    return matched


def known_hosts_name(address: str, port: int) -> str:
    """How known_hosts names a host: `address`, or `[address]:port` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


# --- host key verification -------------------------------------------------------------------


def prefer_known_key_types(transport: paramiko.Transport, known: list[KnownKey]) -> None:
    """Negotiate a host key type we already know first, as OpenSSH does."""
    options = transport.get_security_options()
    wanted: list[str] = []
    for entry in known:
        name = entry.key.get_name()
        wanted.extend(_HOSTKEY_ALGORITHMS.get(name, (name,)))
    first = [t for t in options.key_types if t in wanted]
    if first:
        options.key_types = first + [t for t in options.key_types if t not in first]


def verify_host_key(
    address: str,
    port: int,
    server_key: paramiko.PKey,
    known: list[KnownKey],
    policy: HostKeyPolicy,
) -> str | None:
    """Raise HostKeyError unless the host key is trusted by `known` (the entries matching
    this host) or, when none is known, by the policy; a known_hosts line if newly accepted."""
    name = known_hosts_name(address, port)
    blob = server_key.asbytes()
    got = server_key.fingerprint
    if any(k.revoked and k.key.asbytes() == blob for k in known):
        raise HostKeyError(
            f"host key {got} of {name} is marked @revoked in known_hosts; verify the node "
            "and give it a new host key",
        )
    trusted = [k for k in known if not k.revoked]
    if any(k.key.asbytes() == blob for k in trusted):
        return None
    if trusted:
        same_type = [k for k in trusted if k.key.get_name() == server_key.get_name()]
        expected = ", ".join(dict.fromkeys(k.key.fingerprint for k in same_type or trusted))
        raise HostKeyError(
            f"HOST KEY CHANGED for {name}: expected {expected}, got {got} — possible "
            "impersonation; verify the node and update known_hosts",
        )
    if policy is HostKeyPolicy.ACCEPT_NEW:
        return f"{name} {server_key.get_name()} {server_key.get_base64()}"
    raise HostKeyError(
        f"host key of {name} ({got}) is not known; add it to the node-ssh-access block's "
        f"known_hosts (ssh-keyscan -p {port} {address}) or set host_key_policy "
        "to accept-new",
    )
