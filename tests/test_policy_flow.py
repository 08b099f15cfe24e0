"""validate-policy in provision-cluster: nothing is touched unless policy allows it."""

from __future__ import annotations

import base64
import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from pydantic import SecretStr

from blocks import PolicyService as PolicyBlock
from cluster_mgmt.redact import MASK
from flows.provision import provision_cluster
from lab.policy_service import PolicyService
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 50
TOKEN = "policy-token-0123456789abcdef"

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def policy_service(tmp_path_factory):
    with PolicyService(tmp_path_factory.mktemp("policy"), TOKEN) as service:
        yield service


@pytest.fixture
def policed(env: Env, policy_service) -> Env:
    policy_service.set_mode("normal")
    env.blocks["policy"] = f"policy-{env.tag}"
    PolicyBlock(
        url=policy_service.url,
        token=SecretStr(TOKEN),
        ca_bundle=policy_service.ca_pem,
        timeout_seconds=2,
    ).save(env.blocks["policy"], overwrite=True)
    return env


def untouched(env: Env, before: list[int]) -> None:
    """No SSH connection reached any node, and the cluster has no directory."""
    assert [n.connections() for n in env.lab.nodes] == before
    assert not env.cluster.dir.exists()


def test_allowed_request_is_provisioned_and_the_decision_kept(policed: Env, policy_service):
    state = policed.provision()
    assert state.is_completed(), failure_message(state)
    assert policy_service.requests == 1
    decisions = sorted(policed.cluster.history_dir.glob("*-provision-policy/policy-decision.json"))
    decision = json.loads(decisions[-1].read_text())
    assert decision["allowed"] is True and decision["source"] == f"service {policy_service.url}"


def test_the_token_never_reaches_logs_results_or_artifacts(policed: Env, policy_service):
    policy_service.set_mode("deny")
    state = policed.provision()
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        run = client.read_flow_run(run_id)
    assert logs and artifacts
    text = "".join(log.message for log in logs) + "".join(
        f"{a.data}{a.description}" for a in artifacts
    )
    text += f"{run.state.message}{run.parameters}{failure_message(state)}"
    assert "denied" in text
    assert TOKEN not in text


def _run_text(state) -> str:
    """Everything an API client sees of a run: its logs, artifacts, state message, result."""
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        run = client.read_flow_run(run_id)
    assert logs and artifacts
    text = "\n".join(log.message for log in logs)
    text += "".join(f"{a.data}{a.description}" for a in artifacts)
    return text + f"{run.state.message}{run.parameters}{failure_message(state)}"


@pytest.mark.parametrize("severity", ["warning", "error"])
def test_a_token_echoed_by_the_service_is_masked_everywhere(
    policed: Env, policy_service, severity: str
):
    policy_service.set_mode("echo-token", severity=severity)
    state = policed.provision()
    assert state.is_completed() is (severity == "warning"), failure_message(state)
    text = _run_text(state)
    kept = sorted(policed.cluster.history_dir.glob("*-provision-policy/policy-decision.json"))
    text += "".join(path.read_text() for path in kept)
    assert bool(kept) is (severity == "warning")  # a denied first provision leaves no cluster
    assert TOKEN not in text and base64.b64encode(TOKEN.encode()).decode() not in text
    assert f"caller-{MASK}" in text and f"caller {MASK} may not do this" in text


def test_denied_request_touches_nothing(policed: Env, policy_service):
    policy_service.set_mode("deny")
    before = [n.connections() for n in policed.lab.nodes]
    state = policed.provision()
    assert state.is_failed()
    assert "policy denied" in failure_message(state)
    untouched(policed, before)


@pytest.mark.parametrize(
    ("mode", "options", "needle"),
    [
        ("error500", {}, "500"),
        ("slow", {"delay": 5}, "no answer within"),
        ("refused", {}, "connect"),
        ("malformed", {}, "JSON"),
        ("wrong-content-type", {}, "content type"),
        ("untrusted-cert", {}, "TLS"),
    ],
)
def test_faults_fail_before_any_node_is_touched(
    policed: Env, policy_service, mode, options, needle
):
    policy_service.set_mode(mode, **options)
    before = [n.connections() for n in policed.lab.nodes]
    state = policed.provision()
    assert state.is_failed()
    message = failure_message(state)
    assert needle.lower() in message.lower(), message
    assert TOKEN not in message
    assert policy_service.requests <= 4  # bounded retries (untrusted TLS never gets a request)
    untouched(policed, before)


def test_a_mistyped_policy_block_is_an_error_not_the_built_in_rules(env: Env):
    state = provision_cluster(
        spec=env.spec(), **{**env.blocks, "policy": "polcy"}, return_state=True
    )
    assert state.is_failed() and "block policy-service/polcy does not exist" in failure_message(
        state
    )
    assert not env.cluster.dir.exists()


def test_built_in_rules_apply_without_a_block(env: Env):
    spec = env.spec().model_copy(update={"network_plugin": "none"})
    before = [n.connections() for n in env.lab.nodes]
    state = env.provision(spec)
    assert state.is_failed()
    assert "built-in" in failure_message(state) and "network" in failure_message(state)
    untouched(env, before)


def test_teardown_is_validated_too(policed: Env, policy_service):
    assert policed.provision().is_completed()
    policy_service.set_mode("deny")
    before = [n.connections() for n in policed.lab.nodes]
    state = policed.teardown()
    assert state.is_failed() and "policy denied" in failure_message(state)
    assert [n.connections() for n in policed.lab.nodes] == before
    assert policed.cluster.read_status().phase == "READY"
    denial = sorted(policed.cluster.history_dir.glob("*-teardown-policy/policy-decision.json"))
    assert json.loads(denial[-1].read_text())["allowed"] is False
    policy_service.set_mode("normal")
    assert policed.teardown().is_completed()
