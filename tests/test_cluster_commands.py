"""`cluster-mgmt configure`, `apply`, `delete-resource` and `rotate-credentials`: each starts
its deployment (one declared in prefect.yaml) with parameters its flow accepts, and bad
arguments stop with one line and exit code 2 before anything is started."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import deployments.client
from deployments.bootstrap import deployment_specs, load_flow
from deployments.cli import app

MANIFEST = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  a: '1'\n"


@pytest.fixture
def started(monkeypatch) -> list[tuple[str, dict]]:
    """The runs the CLI starts, recorded instead of sent to the Prefect API."""
    runs: list[tuple[str, dict]] = []

    def trigger(deployment: str, parameters: dict) -> SimpleNamespace:
        runs.append((deployment, parameters))
        return SimpleNamespace(id=uuid.uuid4(), name="quiet-fox")

    monkeypatch.setattr(deployments.client, "trigger", trigger)
    monkeypatch.setattr(deployments.client, "run_url", lambda run_id: f"http://ui/{run_id}")
    return runs


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def manifest(tmp_path) -> str:
    path = tmp_path / "web.yaml"
    path.write_text(MANIFEST)
    return str(path)


@pytest.mark.parametrize(
    ("args", "deployment", "parameters"),
    [
        (["configure", "dev", "web"], "configure-cluster/default", {}),
        (
            ["apply", "dev", "web", "-f", "{manifest}", "--name", "site"],
            "apply-managed-resource/default",
            {"resource_name": "site", "manifest": MANIFEST},
        ),
        (
            ["delete-resource", "dev", "web", "site"],
            "delete-managed-resource/default",
            {"resource_name": "site"},
        ),
        (["rotate-credentials", "dev", "web"], "rotate-customer-credentials/default", {}),
    ],
    ids=["configure", "apply", "delete-resource", "rotate-credentials"],
)
def test_command_starts_its_deployment_with_its_parameters(
    started, manifest, args, deployment, parameters
):
    result = invoke(*(a.format(manifest=manifest) for a in args))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("flow run ") and "(quiet-fox) started: http://ui/" in (
        result.output
    )
    expected = {"environment": "dev", "name": "web", **parameters}
    assert started == [(deployment, expected)]
    # the deployment is one bootstrap creates, and its flow accepts these parameters
    flow_name, name = deployment.split("/")
    [spec] = [
        s
        for s in deployment_specs()
        if s["name"] == name and load_flow(s["entrypoint"]).name == flow_name
    ]
    load_flow(spec["entrypoint"]).validate_parameters(expected)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["configure", "Dev-1", "web"], "environment 'Dev-1' is not valid"),
        (["apply", "dev", "../etc", "-f", "{manifest}", "--name", "x"], "name '../etc' is not"),
        (["delete-resource", "dev", "web", "a/b"], "resource name 'a/b' is not a DNS-1123"),
        (["delete-resource", "dev", "web_1", "site"], "name 'web_1' is not valid"),
        (["rotate-credentials", "dev", "web-"], "name 'web-' is not valid"),
    ],
    ids=["configure", "apply", "delete-resource", "delete-resource-cluster", "rotate"],
)
def test_bad_argument_is_one_line_and_exit_2_before_anything_starts(started, manifest, args, says):
    result = invoke(*(a.format(manifest=manifest) for a in args))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert started == []
