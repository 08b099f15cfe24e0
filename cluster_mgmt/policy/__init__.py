"""Policy: may this change happen? Built-in YAML rules, or the Policy Management Service.

Both answer with the same `Decision`. A denial is a `Decision` with `allowed=False`; a
`PolicyError` means no verdict could be obtained (bad policy file, unreachable or misbehaving
service, rejected token) and must stop the operation as surely as a denial does.

- `decision`: `Decision`, `Violation`, `PolicyError`, the kinds of request.
- `rules`: the built-in rules, parsed from a YAML policy file (`load_rules`).
- `client`: the HTTPS client of the service (`PolicyClient`).
"""

from cluster_mgmt.policy.client import (
    MAX_RESPONSE_BYTES,
    TOTAL_TIMEOUT_SECONDS,
    PolicyClient,
    Verdict,
    backoff_delay,
    parse_verdict,
)
from cluster_mgmt.policy.decision import (
    CLUSTER,
    KINDS,
    MAINTENANCE,
    TEARDOWN,
    Decision,
    PolicyDeniedError,
    PolicyError,
    Severity,
    Violation,
)
from cluster_mgmt.policy.rules import DEFAULT_POLICY_FILE, RULE_TYPES, Rule, RuleSet, load_rules

__all__ = [
    "CLUSTER",
    "DEFAULT_POLICY_FILE",
    "KINDS",
    "MAINTENANCE",
    "MAX_RESPONSE_BYTES",
    "RULE_TYPES",
    "TEARDOWN",
    "TOTAL_TIMEOUT_SECONDS",
    "Decision",
    "PolicyClient",
    "PolicyDeniedError",
    "PolicyError",
    "Rule",
    "RuleSet",
    "Severity",
    "Verdict",
    "Violation",
    "backoff_delay",
    "load_rules",
    "parse_verdict",
]
