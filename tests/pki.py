"""Real certificates and keys for tests, made at run time (no key material in the repo)."""

from __future__ import annotations

import base64
import datetime
import functools

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@functools.cache
def key_pem(label: str = "key") -> str:
    """A PEM private key (EC P-256: fast to make), one per label."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@functools.cache
def cert_pem(common_name: str = "kube-ca") -> str:
    """A self-signed PEM certificate for `common_name`, signed by ``key_pem(common_name)``."""
    key = serialization.load_pem_private_key(key_pem(common_name).encode(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
