"""Policy: may this change happen? Built-in YAML rules, or the Policy Management Service.

Both answer with the same `Decision` (design.md, "Policy service"). A denial is a `Decision`
with `allowed=False`; a `PolicyError` means no verdict could be obtained (bad policy file,
unreachable or misbehaving service, rejected token) and must stop the operation as surely as
a denial does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import yaml

Severity = Literal["error", "warning"]
SEVERITIES: tuple[str, ...] = ("error", "warning")
CLUSTER = "rke-cluster"
TEARDOWN = "rke-cluster-teardown"
KINDS: tuple[str, ...] = (CLUSTER, TEARDOWN)
DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.yaml")
MAX_RESPONSE_BYTES = 1 << 20
MASK = "********"


class PolicyError(Exception):
    """No verdict: the policy file, the service or its answer is unusable; says what to fix."""

    def __init__(self, message: str, *, attempts: int = 0, elapsed_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.elapsed_seconds = elapsed_seconds


@dataclass(frozen=True)
class Violation:
    """One broken rule."""

    rule: str
    message: str
    severity: Severity

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message, "severity": self.severity}


@dataclass(frozen=True)
class Decision:
    """A verdict, where it came from, and what obtaining it cost."""

    allowed: bool
    violations: tuple[Violation, ...]
    source: str  # "service <url>" or "built-in <path>"
    version: str  # sha256 of the policy file, or the service's reported version / "unknown"
    attempts: int = 0  # HTTP requests made (0 for the built-in rules)
    elapsed_seconds: float = 0.0

    @property
    def errors(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.severity == "error")

    @property
    def warnings(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.severity == "warning")

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "violations": [v.to_dict() for v in self.violations],
            "source": self.source,
            "version": self.version,
            "attempts": self.attempts,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }

    def summary(self) -> str:
        """One line for logs and flow results: the verdict and every violation."""
        verdict = "allowed" if self.allowed else "denied"
        head = f"policy {verdict} by {self.source} (version {self.version[:12]})"
        if not self.violations:
            return head
        listed = "; ".join(f"[{v.severity}] {v.rule}: {v.message}" for v in self.violations)
        return f"{head}: {listed}"


# --------------------------------------------------------------------------- built-in rules


def _str_list(choices: Iterable[str] | None = None) -> Callable[[Any], tuple[str, ...]]:
    allowed = tuple(choices) if choices is not None else None

    def parse(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a non-empty list of strings")
        unknown = [v for v in value if allowed is not None and v not in allowed]
        if unknown:
            raise ValueError(f"{unknown} not among {list(allowed or ())}")
        return tuple(value)

    return parse


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _cidrs(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(v) for v in _str_list()(value))
    except ValueError as exc:
        raise ValueError(f"must be a list of CIDRs such as 10.0.0.0/8 ({exc})") from None


def _domains(value: Any) -> tuple[str, ...]:
    return tuple(d.lower().strip(".") for d in _str_list()(value))


@dataclass(frozen=True)
class _RuleType:
    kind: str
    keys: dict[str, Callable[[Any], Any]]
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # at least one of these keys
    needs_environments: bool = False


_COMMON_KEYS = ("name", "type", "severity", "environments", "description")
_TYPES: dict[str, _RuleType] = {
    "kubernetes-versions": _RuleType(CLUSTER, {"allowed": _str_list()}, ("allowed",)),
    "network-plugins": _RuleType(CLUSTER, {"allowed": _str_list()}, ("allowed",)),
    "node-count": _RuleType(CLUSTER, {"min": _count, "max": _count}, one_of=("min", "max")),
    "etcd-quorum": _RuleType(CLUSTER, {"min": _count}),
    "node-addresses": _RuleType(
        CLUSTER, {"cidrs": _cidrs, "domains": _domains}, one_of=("cidrs", "domains")
    ),
    "etcd-snapshots": _RuleType(
        CLUSTER, {"max_interval_hours": _count, "min_retention_hours": _count}
    ),
    "customer-access": _RuleType(
        CLUSTER, {"allowed": _str_list(("cluster-admin", "namespace-admin"))}, ("allowed",)
    ),
    "protected-environments": _RuleType(TEARDOWN, {}, needs_environments=True),
}


@dataclass(frozen=True)
class Rule:
    """One declarative rule from the policy file."""

    name: str
    type: str
    severity: Severity
    environments: frozenset[str] | None
    params: Mapping[str, Any] = field(default_factory=dict)

    def applies(self, kind: str, environment: str) -> bool:
        scoped = self.environments is None or environment in self.environments
        return scoped and _TYPES[self.type].kind == kind

    def check(self, environment: str, name: str, spec: Mapping[str, Any]) -> list[str]:
        """Messages for each way `spec` breaks this rule (empty when it complies)."""
        return _CHECKS[self.type](self.params, environment, name, spec)


def _nodes(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    nodes = spec.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, Mapping) for n in nodes):
        raise PolicyError("spec has no list of nodes: pass ClusterSpec.model_dump(mode='json')")
    return nodes


def _check_version(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    version = spec.get("kubernetes_version")
    if not version:
        return ["kubernetes_version is not set: resolve it (ClusterSpec.with_version) first"]
    if version in p["allowed"]:
        return []
    return [f"kubernetes_version {version} is not allowed; use one of {', '.join(p['allowed'])}"]


def _check_plugin(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    plugin = spec.get("network_plugin", "canal")
    if plugin in p["allowed"]:
        return []
    return [f"network_plugin {plugin} is not allowed; use one of {', '.join(p['allowed'])}"]


def _check_count(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    count = len(_nodes(spec))
    if "min" in p and count < p["min"]:
        return [f"{count} nodes is fewer than the minimum of {p['min']} in {env}"]
    if "max" in p and count > p["max"]:
        return [f"{count} nodes is more than the maximum of {p['max']} in {env}"]
    return []


def _check_quorum(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    least = p.get("min", 3)
    etcd = sum("etcd" in n.get("roles", ()) for n in _nodes(spec))
    if etcd >= least and etcd % 2 == 1:
        return []
    return [f"{etcd} etcd nodes in {env}: give etcd to an odd number of at least {least} nodes"]


def _address_allowed(address: str, p: Mapping) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        host = address.lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in p.get("domains", ()))
    return any(ip in net for net in p.get("cidrs", ()))


def _check_addresses(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    where = [str(n) for n in (*p.get("cidrs", ()), *p.get("domains", ()))]
    found = []
    for node in _nodes(spec):
        for key in ("address", "internal_address"):
            value = node.get(key)
            if value and not _address_allowed(str(value), p):
                found.append(f"node {key} {value} is outside the allowed {', '.join(where)}")
    return found


def _check_snapshots(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    snaps = spec.get("etcd_snapshots") or {}
    if not snaps.get("enabled", True):
        return [f"etcd_snapshots must be enabled in {env}"]
    found = []
    if "max_interval_hours" in p and snaps.get("interval_hours", 6) > p["max_interval_hours"]:
        found.append(
            f"etcd_snapshots.interval_hours {snaps.get('interval_hours')} exceeds "
            f"{p['max_interval_hours']} in {env}"
        )
    if "min_retention_hours" in p and snaps.get("retention_hours", 24) < p["min_retention_hours"]:
        found.append(
            f"etcd_snapshots.retention_hours {snaps.get('retention_hours')} is below "
            f"{p['min_retention_hours']} in {env}"
        )
    return found


def _check_access(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    access = (spec.get("customer") or {}).get("access", "cluster-admin")
    if access in p["allowed"]:
        return []
    return [f"customer.access {access} is not allowed in {env}; use {', '.join(p['allowed'])}"]


def _check_protected(p: Mapping, env: str, name: str, spec: Mapping) -> list[str]:
    return [f"environment {env} is protected: cluster {name} cannot be torn down"]


_CHECKS: dict[str, Callable[[Mapping, str, str, Mapping], list[str]]] = {
    "kubernetes-versions": _check_version,
    "network-plugins": _check_plugin,
    "node-count": _check_count,
    "etcd-quorum": _check_quorum,
    "node-addresses": _check_addresses,
    "etcd-snapshots": _check_snapshots,
    "customer-access": _check_access,
    "protected-environments": _check_protected,
}


@dataclass(frozen=True)
class RuleSet:
    """The rules of one policy file, identified by the file's sha256."""

    path: Path
    version: str
    rules: tuple[Rule, ...]

    def evaluate(self, kind: str, environment: str, name: str, spec: Mapping[str, Any]) -> Decision:
        """The verdict on `spec`: denied iff an error-severity rule is broken."""
        if kind not in KINDS:
            raise PolicyError(f"unknown policy kind {kind!r}; use one of {', '.join(KINDS)}")
        start = time.monotonic()
        violations = tuple(
            Violation(rule.name, message, rule.severity)
            for rule in self.rules
            if rule.applies(kind, environment)
            for message in rule.check(environment, name, spec)
        )
        return Decision(
            allowed=not any(v.severity == "error" for v in violations),
            violations=violations,
            source=f"built-in {self.path}",
            version=self.version,
            elapsed_seconds=time.monotonic() - start,
        )


def load_rules(path: Path | None = None) -> RuleSet:
    """Parse and check a policy file (default: the one shipped with the package)."""
    path = Path(path or DEFAULT_POLICY_FILE)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"policy file {path} cannot be read: {exc.strerror}") from None
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"rules"}:
        raise PolicyError(f"policy file {path} must be a mapping with exactly one key, 'rules'")
    if not isinstance(document["rules"], list):
        raise PolicyError(f"policy file {path}: 'rules' must be a list of rules")
    rules = tuple(_parse_rule(path, i, r) for i, r in enumerate(document["rules"]))
    names = [r.name for r in rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise PolicyError(f"policy file {path}: rule name {duplicate!r} is used twice")
    return RuleSet(path, hashlib.sha256(raw).hexdigest(), rules)


def _parse_rule(path: Path, index: int, raw: Any) -> Rule:
    label = f"policy file {path}, rule #{index + 1}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{label}: a rule is a mapping with name, type and its settings")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{label}: key 'name' is missing or not a string")
    label = f"policy file {path}, rule {name!r}"
    kind = _TYPES.get(raw.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise PolicyError(
            f"{label}: key 'type' has unknown rule type {raw.get('type')!r}; "
            f"known types: {', '.join(_TYPES)}"
        )
    for key in raw:
        if key not in _COMMON_KEYS and key not in kind.keys:
            allowed = ", ".join([*_COMMON_KEYS, *kind.keys])
            raise PolicyError(f"{label}: unknown key {key!r}; a {raw['type']} rule takes {allowed}")
    severity = raw.get("severity", "error")
    if severity not in SEVERITIES:
        raise PolicyError(f"{label}: key 'severity' must be error or warning, not {severity!r}")
    environments = raw.get("environments")
    if environments is not None:
        try:
            environments = frozenset(_str_list()(environments))
        except ValueError as exc:
            raise PolicyError(f"{label}: key 'environments' {exc}") from None
    elif kind.needs_environments:
        raise PolicyError(f"{label}: key 'environments' is required for a {raw['type']} rule")
    missing = [k for k in kind.required if k not in raw]
    if missing or (kind.one_of and not any(k in raw for k in kind.one_of)):
        wanted = missing[0] if missing else " or ".join(kind.one_of)
        raise PolicyError(f"{label}: key {wanted!r} is required for a {raw['type']} rule")
    params = {}
    for key, parse in kind.keys.items():
        if key in raw:
            try:
                params[key] = parse(raw[key])
            except ValueError as exc:
                raise PolicyError(f"{label}: key {key!r} {exc}") from None
    if "min" in params and "max" in params and params["min"] > params["max"]:
        raise PolicyError(f"{label}: key 'min' ({params['min']}) exceeds 'max' ({params['max']})")
    return Rule(name, raw["type"], severity, environments, params)


# --------------------------------------------------------------------------- service client


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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 else None


def _ssl_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class PolicyClient:
    """Client of the Policy Management Service: `POST {url}/v1/validate`, bounded retries.

    `ca_bundle` is PEM text (it contains ``-----BEGIN CERTIFICATE-----``, as pasted into the
    policy-service block) or the path of a PEM file; when given, it replaces the system trust
    store, so only that CA is trusted. The token never appears in a message or repr.
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
        total_timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = _check_url(url)
        if not isinstance(token, str) or not token.strip():
            raise PolicyError("the policy-service block has no token: set its token field")
        self._token = token
        if min(timeout_seconds, backoff_max, total_timeout) <= 0 or backoff_base < 0:
            raise PolicyError("policy-service timeouts and backoffs must be positive numbers")
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
        if kind not in KINDS:
            raise PolicyError(f"unknown policy kind {kind!r}; use one of {', '.join(KINDS)}")
        body = {"kind": kind, "environment": environment, "name": name, "spec": dict(spec)}
        start = time.monotonic()
        deadline = start + self.total_timeout
        attempt = 0
        with httpx.Client(verify=self._verify, follow_redirects=False) as client:
            while True:
                attempt += 1
                try:
                    content = self._attempt(client, body, deadline)
                except _Retryable as exc:
                    self._pause(attempt, exc, start, deadline)
                    continue
                except PolicyError as exc:
                    raise self._error(str(exc), attempt, start) from None
                try:
                    return self._decision(content, attempt, time.monotonic() - start)
                except PolicyError as exc:
                    raise self._error(str(exc), attempt, start) from None

    def _attempt(self, client: httpx.Client, body: dict, deadline: float) -> bytes:
        """One request; returns the body of a usable 200, raises _Retryable or PolicyError."""
        timeout = max(0.001, min(self.timeout_seconds, deadline - time.monotonic()))
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        try:
            with client.stream(
                "POST",
                f"{self.url}/v1/validate",
                json=body,
                headers=headers,
                timeout=httpx.Timeout(timeout),
            ) as response:
                self._check_status(response)
                return _read(response, deadline)
        except httpx.TimeoutException:
            raise _Retryable(f"no answer within {timeout:.1f}s") from None
        except httpx.TransportError as exc:
            tls = _ssl_failure(exc)
            if isinstance(tls, ssl.SSLCertVerificationError):
                raise PolicyError(self._tls_message(tls)) from None
            if tls is not None:
                raise _Retryable(f"TLS handshake failed ({tls.reason or tls})") from None
            raise _Retryable(f"connection failed ({type(exc).__name__}: {exc})") from None

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", _retry_after(response))
        if status in (401, 403):
            raise PolicyError(
                f"policy service at {self.url} rejected the token (HTTP {status}); "
                "fix the token in the policy-service block"
            )
        if status != 200:
            snippet = _read(response, time.monotonic() + 1, limit=300, strict=False)
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

    def _decision(self, content: bytes, attempts: int, elapsed: float) -> Decision:
        allowed, violations, version = parse_verdict(content)
        return Decision(allowed, violations, self.source, version, attempts, elapsed)

    def _pause(self, attempt: int, exc: _Retryable, start: float, deadline: float) -> None:
        """Sleep before the next attempt, or raise when attempts or total time are used up."""
        if attempt >= self.max_attempts:
            raise self._error(
                f"policy service at {self.url} gave no verdict (last: {exc.reason}); "
                "check that the service is up and the policy-service block's url",
                attempt,
                start,
            ) from None
        delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, exc.retry_after)
        if time.monotonic() + delay >= deadline:
            raise self._error(
                f"policy service at {self.url} gave no verdict within the total timeout of "
                f"{self.total_timeout}s (last: {exc.reason}); check that the service is up",
                attempt,
                start,
            ) from None
        self._sleep(delay)

    def _error(self, message: str, attempts: int, start: float) -> PolicyError:
        elapsed = time.monotonic() - start
        plural = "s" if attempts != 1 else ""
        text = f"{message} [{attempts} attempt{plural} in {elapsed:.1f}s]"
        return PolicyError(self._scrub(text), attempts=attempts, elapsed_seconds=elapsed)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, MASK)

    def _tls_message(self, exc: ssl.SSLCertVerificationError) -> str:
        return (
            f"TLS verification of the policy service at {self.url} failed "
            f"({exc.verify_message}): its certificate is not trusted; set ca_bundle in the "
            "policy-service block to the CA that signed it (PEM text or a file path)"
        )


def parse_verdict(content: bytes) -> tuple[bool, tuple[Violation, ...], str]:
    """`(allowed, violations, version)` from a service answer; PolicyError if malformed."""
    try:
        data = json.loads(content)
    except ValueError:
        raise PolicyError("the policy service's answer is not valid JSON") from None
    if not isinstance(data, dict):
        raise PolicyError("the policy service's answer is not a JSON object")
    allowed = data.get("allowed")
    if not isinstance(allowed, bool):
        raise PolicyError("the policy service's answer has no boolean 'allowed'")
    raw = data.get("violations")
    if not isinstance(raw, list):
        raise PolicyError("the policy service's answer has no list 'violations'")
    violations = tuple(_violation(i, v) for i, v in enumerate(raw))
    if allowed and any(v.severity == "error" for v in violations):
        raise PolicyError("the policy service allowed a request with error violations")
    version = data.get("version")
    return allowed, violations, version if isinstance(version, str) and version else "unknown"


def _violation(index: int, raw: Any) -> Violation:
    where = f"the policy service's violation #{index + 1}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} is not an object")
    for key in ("rule", "message"):
        if not isinstance(raw.get(key), str):
            raise PolicyError(f"{where} has no string {key!r}")
    if raw.get("severity") not in SEVERITIES:
        raise PolicyError(f"{where} has severity {raw.get('severity')!r}, not error or warning")
    return Violation(raw["rule"], raw["message"], raw["severity"])


def _read(response: httpx.Response, deadline: float, limit=MAX_RESPONSE_BYTES, strict=True):
    """The body, read before `deadline` and at most `limit` bytes."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if strict:
                raise PolicyError(f"the policy service's answer exceeds {limit} bytes")
            break
        if time.monotonic() > deadline:
            raise _Retryable("answer not complete before the total timeout")
    return b"".join(chunks)[:limit]


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
