"""Task: validate a change against policy before any node or file is touched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.loading import BlockNotFoundError, load_block
from blocks.policy import PolicyService
from cluster_mgmt.policy import Decision, load_rules
from cluster_mgmt.redact import register_secret
from tasks.reporting import publish_decision


@task(name="validate-policy", cache_policy=NO_CACHE)
def validate_policy(
    policy: str, kind: str, environment: str, name: str, spec: dict[str, Any]
) -> Decision:
    """Ask the `policy-service` block named `policy`, or the built-in rules without one.

    Args:
        policy: Name of the `policy-service` block.
        kind: `rke-cluster` (create or change) or `rke-cluster-teardown`.
        environment: The cluster's environment.
        name: The cluster's name.
        spec: The request (ClusterSpec as JSON), `{}` for teardown.

    Returns:
        The decision, a denial too: the flow decides what to do with it (so a denial ends
        the run with its one-line reason, not a task traceback). The client retries
        transient failures itself, with a bounded total.
    """
    logger = get_run_logger()
    try:
        block = load_block(PolicyService, policy)
    except BlockNotFoundError:
        if policy != "default":
            raise  # a mistyped name must not fall back to the built-in rules
        path = os.environ.get("CLUSTER_MGMT_POLICY_FILE")
        decision = load_rules(Path(path) if path else None).evaluate(kind, environment, name, spec)
    else:
        register_secret(block.token.get_secret_value())
        decision = block.client().validate(kind, environment, name, spec)
    publish_decision(environment, name, decision)
    for warning in decision.warnings:
        logger.warning("policy warning [%s]: %s", warning.rule, warning.message)
    logger.info("policy: %s", decision.summary())
    return decision
