"""A policy verdict: `Decision` and its `Violation`s, the same from the rules or the service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import StrictStr
from pydantic.dataclasses import dataclass as validated

from cluster_mgmt.errors import ClusterMgmtError

Severity = Literal["error", "warning"]
CLUSTER = "rke-cluster"
TEARDOWN = "rke-cluster-teardown"
MAINTENANCE = "rke-cluster-maintenance"
"""Day-2 work that keeps the spec (certificates, etcd snapshots, state recovery); the request's
`spec` is `{"operation": <Operation>, "parameters": {...}}`."""
KINDS: tuple[str, ...] = (CLUSTER, TEARDOWN, MAINTENANCE)


class PolicyError(ClusterMgmtError):
    """No verdict: the policy file, the service or its answer is unusable; says what to fix."""

    def __init__(self, message: str, *, attempts: int = 0, elapsed_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.elapsed_seconds = elapsed_seconds


def check_kind(kind: str) -> None:
    """Raise PolicyError unless `kind` is one the policy knows."""
    if kind not in KINDS:
        raise PolicyError(f"unknown policy kind {kind!r}; use one of {', '.join(KINDS)}")


@validated(frozen=True)
class Violation:
    """One broken rule (validated: it is also how the service's answer is parsed)."""

    rule: StrictStr
    message: StrictStr
    severity: Severity

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message, "severity": self.severity}

    def masked(self, clean: Callable[[str], str]) -> Violation:
        """This violation with `clean` applied to its strings."""
        return Violation(clean(self.rule), clean(self.message), self.severity)


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


class PolicyDeniedError(ClusterMgmtError):
    """Policy refused the change; the message lists the violated rules."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.summary())
        self.decision = decision

    def __reduce__(self) -> tuple:
        return type(self), (self.decision,)
