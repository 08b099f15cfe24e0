"""A refused or denied run fails cleanly, as the Prefect UI shows its logs: one error line that
says what to fix, no traceback (`assert_fails_cleanly`; test_flows checks a refused changed
spec the same way); the policy decision's artifact says what it is."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import State

from cluster_mgmt.spec import ClusterSpec
from flows.provision import provision_cluster
from tests.flowenv import Env, assert_fails_cleanly

LAB_FIRST_ADDRESS = 140

pytestmark = pytest.mark.usefixtures("prefect_server")


def _denied(env: Env) -> State:
    """prod needs three nodes and an etcd quorum (the built-in rules): one node is denied."""
    return env.provision(ClusterSpec(**{**env.spec(1).model_dump(), "environment": "prod"}))


def _busy(env: Env) -> State:
    env.cluster.create()
    with env.cluster.lock("teardown", "run-123"):
        return env.provision(env.spec(1))


def _invalid(env: Env) -> State:
    """A spec the form lets through (JSON Schema cannot compare nodes): one address twice."""
    spec = env.spec(1).model_dump(mode="json")
    spec["nodes"] = spec["nodes"] * 2
    return provision_cluster(spec=spec, **env.blocks, return_state=True)


@pytest.mark.parametrize(
    ("run", "fix"),
    [
        (_denied, "policy denied"),
        (_busy, "operation teardown in progress (flow run run-123)"),
        (_invalid, "spec: nodes: address '127.0.0.140' appears twice; every node needs its own"),
    ],
    ids=["policy-denial", "busy", "invalid-input"],
)
def test_a_refused_run_logs_one_error_line_and_no_traceback(
    env: Env, run: Callable[[Env], State], fix: str
):
    before = [n.connections() for n in env.lab.nodes]
    assert_fails_cleanly(run(env), fix)
    assert [n.connections() for n in env.lab.nodes] == before


def test_the_policy_decision_artifact_has_a_key_and_a_description(env: Env):
    state = _denied(env)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    (decision,) = [a for a in artifacts if a.type == "table"]
    assert decision.key == f"policy-prod-{env.name}"
    assert decision.description.startswith(f"Policy decision for prod/{env.name}: policy denied")
    assert decision.task_run_id is not None  # made in a task: the UI's artifact pages need one
