"""Client of the Policy Management Service: `POST {url}/v1/validate` over HTTPS, bounded.

Time: each attempt (connect, TLS, headers and body together) is cut at `timeout_seconds`, and
the whole call (every attempt and every backoff) at `total_timeout`; both are cancel scopes
around the async request, so a service that trickles bytes cannot stretch either. Size: the
answer is read raw, at most `MAX_RESPONSE_BYTES`, and only uncompressed (we ask for `identity`
and refuse any other Content-Encoding), so a small answer cannot inflate in memory. Secrets:
every string taken from the answer is redacted before it becomes part of a `Decision` or an
error, so a service that echoes the token leaks it nowhere.
"""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError, model_validator

from cluster_mgmt.policy.decision import Decision, PolicyError, Violation, check_kind
from cluster_mgmt.redact import MASK, redact, register_secret

MAX_RESPONSE_BYTES = 1 << 20
TOTAL_TIMEOUT_SECONDS = 60.0
ANSWER_SHAPE = '{"allowed": bool, "violations": [{"rule", "message", "severity"}]}'


class Verdict(BaseModel):
    """The service's answer; keys we do not know are ignored (the service may add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    allowed: StrictBool
    violations: list[Violation]
    version: StrictStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.allowed and any(v.severity == "error" for v in self.violations):
            raise ValueError("it allowed a request with error violations")
        return self


def parse_verdict(content: bytes) -> Verdict:
    """The service's answer, checked; PolicyError (never an allow) if it is malformed."""
    try:
        return Verdict.model_validate_json(content)
    except ValidationError as exc:
        error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "json_invalid":
        problem = "is not valid JSON"
    elif error["type"] == "model_type" and not where:
        problem = "is not a JSON object"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        problem = f"is malformed ({f'key {where!r}: ' if where else ''}{message})"
    raise PolicyError(f"the policy service's answer {problem}; expected {ANSWER_SHAPE}")


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None = None, rng=random
) -> float:
    """Seconds to wait after failed `attempt` (1-based): full jitter, or Retry-After; capped."""
    if retry_after is not None:
        return min(retry_after, cap)
    return rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))


class PolicyClient:
    """Client of the Policy Management Service, with bounded retries and one deadline.

    `timeout_seconds` bounds one attempt and may not exceed `total_timeout`, which bounds the
    call. `ca_bundle` is PEM text (it contains ``-----BEGIN CERTIFICATE-----``, as pasted into
    the policy-service block) or the path of a PEM file; when given, it replaces the system
    trust store. The token is registered for redaction and never appears in a message or repr.
    `validate` is for synchronous callers; from async code await `avalidate`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        timeout_seconds: float = 10.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        total_timeout: float = TOTAL_TIMEOUT_SECONDS,
        sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
    ) -> None:
        self.url = _check_url(url)
        if not isinstance(token, str) or not token.strip():
            raise PolicyError("the policy-service block has no token: set its token field")
        self._token = token
        register_secret(token)
        if min(timeout_seconds, backoff_max, total_timeout) <= 0 or backoff_base < 0:
            raise PolicyError("policy-service timeouts and backoffs must be positive numbers")
        if timeout_seconds > total_timeout:
            raise PolicyError(
                f"policy-service timeout_seconds ({timeout_seconds:g}) exceeds the "
                f"{total_timeout:g}s a whole validation may take; set it to at most "
                f"{total_timeout:g}"
            )
        if max_attempts < 1:
            raise PolicyError("policy-service max_attempts must be at least 1")
        self.verify_tls = verify_tls
        self._verify = _verify(verify_tls, ca_bundle)
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.total_timeout = total_timeout
        self._sleep = sleep

    def __repr__(self) -> str:
        return (
            f"PolicyClient(url={self.url!r}, verify_tls={self.verify_tls}, "
            f"timeout_seconds={self.timeout_seconds}, max_attempts={self.max_attempts}, "
            f"total_timeout={self.total_timeout})"
        )

    @property
    def source(self) -> str:
        return f"service {self.url}"

    def validate(self, kind: str, environment: str, name: str, spec: Mapping[str, Any]) -> Decision:
        """Ask the service for a verdict; PolicyError when none is obtained in time."""
        return anyio.run(self.avalidate, kind, environment, name, spec)

    async def avalidate(
        self, kind: str, environment: str, name: str, spec: Mapping[str, Any]
    ) -> Decision:
        """`validate` for async callers."""
        check_kind(kind)
        body = {"kind": kind, "environment": environment, "name": name, "spec": dict(spec)}
        start = time.monotonic()
        attempt, last = 0, "the first attempt was still running"
        with anyio.move_on_after(self.total_timeout):
            async with httpx.AsyncClient(verify=self._verify, follow_redirects=False) as client:
                while True:
                    attempt += 1
                    try:
                        content = await self._attempt(client, body)
                        return self._decision(content, attempt, start)
                    except _Retryable as exc:
                        last = exc.reason
                        await self._pause(attempt, exc, start)
                    except PolicyError as exc:
                        raise self._error(str(exc), attempt, start) from None
        raise self._error(
            f"policy service at {self.url} gave no verdict within the total timeout of "
            f"{self.total_timeout:g}s (last: {last}); check that the service is up",
            attempt,
            start,
        )

    async def _attempt(self, client: httpx.AsyncClient, body: dict) -> bytes:
        """One request, cut at `timeout_seconds`; the body of a usable 200, or an exception."""
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }
        url = f"{self.url}/v1/validate"
        try:
            with anyio.fail_after(self.timeout_seconds):
                async with client.stream(
                    "POST", url, json=body, headers=headers, timeout=None
                ) as response:
                    return await self._answer(response)
        except TimeoutError:
            raise _Retryable(f"no answer within {self.timeout_seconds:g}s") from None
        except httpx.TransportError as exc:
            tls = _ssl_failure(exc)
            if isinstance(tls, ssl.SSLCertVerificationError):
                raise PolicyError(self._tls_message(tls)) from None
            if tls is not None:
                raise _Retryable(f"TLS handshake failed ({tls.reason or tls})") from None
            raise _Retryable(f"connection failed ({_os_reason(exc)})") from None

    async def _answer(self, response: httpx.Response) -> bytes:
        """The raw body of a 200 JSON answer; _Retryable or PolicyError for anything else."""
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", _retry_after(response))
        if status in (401, 403):
            raise PolicyError(
                f"policy service at {self.url} rejected the token (HTTP {status}); "
                "fix the token in the policy-service block"
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise PolicyError(
                f"policy service at {self.url} answered with Content-Encoding {encoding!r} "
                "although asked for identity; compressed answers are refused (is a proxy "
                "compressing them?)"
            )
        if status != 200:
            snippet = await _read(response, limit=300, strict=False)
            detail = snippet.decode("utf-8", "replace").strip()
            hint = "check the url in the policy-service block" if status == 404 else ""
            raise PolicyError(
                f"policy service at {self.url} answered HTTP {status} to /v1/validate"
                + (f": {detail}" if detail else "")
                + (f"; {hint}" if hint else "")
            )
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise PolicyError(
                f"policy service at {self.url} answered with content type {ctype or 'none'!r}, "
                "not application/json: is the url that of the policy service (not a proxy "
                "or login page)?"
            )
        return await _read(response)

    def _decision(self, content: bytes, attempts: int, start: float) -> Decision:
        """The verdict as a Decision, every string from the answer redacted."""
        verdict = parse_verdict(content)
        return Decision(
            allowed=verdict.allowed,
            violations=tuple(v.masked(self._scrub) for v in verdict.violations),
            source=self.source,
            version=self._scrub(verdict.version or "unknown"),
            attempts=attempts,
            elapsed_seconds=time.monotonic() - start,
        )

    async def _pause(self, attempt: int, exc: _Retryable, start: float) -> None:
        """Sleep before the next attempt, or raise when attempts or total time are used up."""
        if attempt >= self.max_attempts:
            raise self._error(
                f"policy service at {self.url} gave no verdict (last: {exc.reason}); "
                "check that the service is up and the policy-service block's url",
                attempt,
                start,
            )
        delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, exc.retry_after)
        if time.monotonic() + delay >= start + self.total_timeout:
            raise self._error(
                f"policy service at {self.url} gave no verdict within the total timeout of "
                f"{self.total_timeout:g}s (last: {exc.reason}); check that the service is up",
                attempt,
                start,
            )
        await self._sleep(delay)

    def _error(self, message: str, attempts: int, start: float) -> PolicyError:
        elapsed = time.monotonic() - start
        plural = "s" if attempts != 1 else ""
        text = f"{message} [{attempts} attempt{plural} in {elapsed:.1f}s]"
        return PolicyError(self._scrub(text), attempts=attempts, elapsed_seconds=elapsed)

    def _scrub(self, text: str) -> str:
        return redact(text.replace(self._token, MASK))

    def _tls_message(self, exc: ssl.SSLCertVerificationError) -> str:
        return (
            f"TLS verification of the policy service at {self.url} failed "
            f"({exc.verify_message}): its certificate is not trusted; set ca_bundle in the "
            "policy-service block to the CA that signed it (PEM text or a file path)"
        )


async def _read(response: httpx.Response, limit: int = MAX_RESPONSE_BYTES, strict=True) -> bytes:
    """The raw (never decompressed) body, at most `limit` bytes."""
    chunks, size = [], 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if strict:
                raise PolicyError(f"the policy service's answer exceeds {limit} bytes")
            break
    return b"".join(chunks)[:limit]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 else None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _ssl_failure(exc: BaseException) -> ssl.SSLError | None:
    return next((e for e in _chain(exc) if isinstance(e, ssl.SSLError)), None)


def _os_reason(exc: BaseException) -> str:
    """What the operating system said (e.g. Connection refused), else the exception."""
    reasons = [os.strerror(e.errno) for e in _chain(exc) if isinstance(e, OSError) and e.errno]
    return reasons[-1] if reasons else f"{type(exc).__name__}: {exc}"


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise PolicyError("the policy-service block has no url: set it to https://<host>")
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise PolicyError(f"policy-service url {url!r} must be https://<host>[:port][/path]")
    if parts.username or parts.password:
        raise PolicyError("policy-service url must not carry credentials: use the token field")
    if parts.query or parts.fragment:
        raise PolicyError(f"policy-service url {url!r} must not have a query or fragment")
    return url.strip().rstrip("/")


def _verify(verify_tls: bool, ca_bundle: str | None) -> ssl.SSLContext | bool:
    if not verify_tls:
        return False
    if not ca_bundle or not ca_bundle.strip():
        return True  # httpx's default trust store
    try:
        if "-----BEGIN CERTIFICATE-----" in ca_bundle:
            return ssl.create_default_context(cadata=ca_bundle)
        path = Path(ca_bundle.strip()).expanduser()
        if not path.is_file():
            raise PolicyError(
                f"policy-service ca_bundle {str(path)!r} is neither PEM text nor a readable "
                "file: paste the CA certificate (PEM) or give its path"
            )
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise PolicyError(
            f"policy-service ca_bundle holds no usable CA certificate ({exc})"
        ) from None
