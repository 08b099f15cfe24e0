"""Keep secrets out of logs, results and artifacts.

`redact` masks every registered secret (its text, each of its lines, and their base64 forms)
and credential-shaped values (private-key PEM bodies, kubeconfig and rkestate credential
fields, Authorization headers). `RedactingFilter` applies it to whole log records (message,
traceback, stack) and also masks a private key printed over several records, line by line.
"""

from __future__ import annotations

import base64
import logging
import re
import threading

MASK = "********"
MIN_SECRET_LENGTH = 8  # shorter fragments would mask ordinary words
MAX_PEM_RECORDS = 256  # a multi-record PEM block is masked for at most this many records

_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PATTERNS = [
    # private-key PEM blocks; an unterminated one is masked to the end of the text
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
            re.DOTALL,
        ),
        MASK,
    ),
    # kubeconfig and rkestate fields that carry credentials
    (
        re.compile(
            r"((?:client-key-data|client-certificate-data|token|password|keyPEM|secret[_-]?key)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+",
            re.IGNORECASE,
        ),
        rf"\1{MASK}",
    ),
    (re.compile(r"(Authorization:\s*(?:Bearer|Basic)\s+)\S+", re.IGNORECASE), rf"\1{MASK}"),
]
_URLSAFE = str.maketrans("+/", "-_")
_known: set[str] = set()
_matcher: re.Pattern[str] | None = None
_lock = threading.Lock()


def _forms(value: str) -> set[str]:
    """`value` and its base64: standard and urlsafe, padded or not, and the part that is the
    same wherever `value` sits inside longer base64 (one per alignment, 0-2 bytes before it)."""
    data = value.encode()
    whole = base64.b64encode(data).decode()
    forms = {value, whole, whole.rstrip("=")}
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        forms.add(encoded[4 if offset else 0 : 4 * ((offset + len(data)) // 3)])
    forms |= {form.translate(_URLSAFE) for form in forms}
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def register_secret(value: str | None) -> None:
    """Mask this value, each of its lines, and their base64 forms wherever they appear."""
    global _matcher
    if not value:
        return
    lines = (line.strip() for line in value.splitlines())
    parts = {value.strip(), *(line for line in lines if not line.startswith("-----"))}
    forms = set().union(*(_forms(p) for p in parts if len(p) >= MIN_SECRET_LENGTH))
    with _lock:
        if forms <= _known:
            return
        _known.update(forms)
        ordered = sorted(_known, key=len, reverse=True)  # longest first: mask whole, not parts
        _matcher = re.compile("|".join(map(re.escape, ordered)))


def redact(text: str) -> str:
    """`text` with every registered secret and credential-shaped value masked."""
    matcher = _matcher
    if matcher is not None:
        text = matcher.sub(MASK, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record it passes.

    Masks the message, the traceback (`exc_info` is formatted into a redacted `exc_text` and
    dropped) and `stack_info`. A private key whose BEGIN line and END line arrive in different
    records (a file streamed line by line) is masked from BEGIN through END: the filter
    remembers an open block, for at most `MAX_PEM_RECORDS` records. A record's rewrite is
    seen by the handlers after this one, so one filter per handler suffices.
    """

    _formatter = logging.Formatter()

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._lock = threading.Lock()
        self._open = 0  # records since an unterminated BEGIN line; 0: not inside a block

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        with self._lock:
            cleaned = redact(self._continue_block(message))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            record.exc_text = record.exc_text or self._formatter.formatException(record.exc_info)
            record.exc_info = None  # formatters then print exc_text, which is redacted
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True

    def _continue_block(self, text: str) -> str:
        """Mask what belongs to a PEM block opened by an earlier record; note a new one."""
        if self._open:
            end = _END.search(text)
            if end is None:
                self._open = 0 if self._open >= MAX_PEM_RECORDS else self._open + 1
                return MASK
            text, self._open = MASK + text[end.end() :], 0
        begins = list(_BEGIN.finditer(text))
        if begins and not _END.search(text, begins[-1].end()):
            self._open = 1
        return text
