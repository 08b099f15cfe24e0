"""Keep secrets out of logs, results and artifacts."""

from __future__ import annotations

import logging
import re
import threading

MASK = "********"
_PATTERNS = [
    # PEM private keys (and anything else PEM-armoured that calls itself a key)
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
        re.DOTALL,
    ),
    # kubeconfig and rkestate fields that carry credentials
    re.compile(
        r"((?:client-key-data|client-certificate-data|token|password|keyPEM|secret[_-]?key)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+",
        re.IGNORECASE,
    ),
    re.compile(r"(Authorization:\s*(?:Bearer|Basic)\s+)\S+", re.IGNORECASE),
]
_known: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask this exact value (and each of its lines) wherever it appears from now on."""
    if not value:
        return
    with _lock:
        for part in [value, *value.splitlines()]:
            part = part.strip()
            if len(part) >= 8:
                _known.add(part)


def redact(text: str) -> str:
    """`text` with every registered secret and credential-shaped value masked."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.lastindex else "") + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
