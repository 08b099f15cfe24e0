"""Cluster identity: one place for the environment/name rules and every key derived from them."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from cluster_mgmt.identity import ENVIRONMENT, NAME, ClusterId, clusters_dir, status_key_prefix
from cluster_mgmt.state import StateVolume


def test_derived_keys():
    cluster = ClusterId("prod", "eu-web")
    assert cluster.lock_name == "cluster-prod-eu-web"
    assert cluster.artifact_key == "cluster-prod-eu-web"
    assert cluster.kubeconfig_block == "kubeconfig-prod-eu-web"
    assert cluster.rke_cluster_name == "prod-eu-web"
    assert cluster.event_resource_id == "cluster-mgmt.cluster.prod.eu-web"
    assert str(cluster) == "prod/eu-web"


def test_keys_never_collide():
    # `prod`/`eu-web` and `prod-eu`/`web` would share every key: the environment has no dash.
    with pytest.raises(ValueError, match="environment 'prod-eu'.*no dashes"):
        ClusterId("prod-eu", "web")


@pytest.mark.parametrize(
    ("environment", "name", "needle"),
    [
        ("Prod", "web", "environment"),
        ("", "web", "environment"),
        ("e" * 21, "web", "environment"),
        ("prod\n", "web", "environment"),
        ("prod", "Bad_Name", "DNS-1123 label"),
        ("prod", "-web", "name"),
        ("prod", "web-", "name"),
        ("prod", "", "name"),
        ("prod", "w" * 41, "at most 40"),
        ("prod", "web\n", "name"),
        ("prod", "../web", "name"),
    ],
)
def test_bad_identities_are_refused(environment, name, needle):
    with pytest.raises(ValueError, match=needle):
        ClusterId(environment, name)


def test_limits_are_inclusive():
    cluster = ClusterId("e" * 20, "w" * 40)
    assert cluster.rke_cluster_name == "e" * 20 + "-" + "w" * 40
    assert ENVIRONMENT.matches("default") and NAME.matches("a") and NAME.matches("a-1")


def test_every_derived_key():
    cluster = ClusterId("prod", "eu-web")
    assert cluster.plan_artifact_key == "plan-prod-eu-web"
    assert cluster.policy_artifact_key == "policy-prod-eu-web"
    assert str(cluster.state_dir) == "environments/prod/clusters/eu-web"
    assert cluster.event_resource == {
        "prefect.resource.id": "cluster-mgmt.cluster.prod.eu-web",
        "prefect.resource.name": "prod-eu-web",
        "cluster-mgmt.environment": "prod",
    }
    assert status_key_prefix() == "cluster-"
    assert status_key_prefix("prod") == "cluster-prod-"
    assert cluster.artifact_key.startswith(status_key_prefix("prod"))
    assert str(clusters_dir("prod")) == "environments/prod/clusters"
    with pytest.raises(ValueError, match="environment '../x'"):
        clusters_dir("../x")


def test_state_volume_places_clusters_by_identity(tmp_path):
    volume = StateVolume(tmp_path)
    cluster = volume.cluster("prod", "eu-web")
    assert cluster.id == ClusterId("prod", "eu-web")
    assert cluster.dir == tmp_path / cluster.id.state_dir


# -- no derived key is built outside identity.py ------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
PRODUCTION = ("cluster_mgmt", "tasks", "flows", "blocks", "deployments", "lab")
KEY_PREFIXES = ("cluster-", "policy-", "plan-", "kubeconfig-", "cluster-mgmt.cluster.")
LAYOUT = ("environments",)


def _by_hand(node: ast.AST) -> bool:
    """Whether `node` builds a derived key itself."""
    if isinstance(node, ast.Constant):  # a bare prefix, as in `key.removeprefix("cluster-")`
        return node.value in KEY_PREFIXES
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # a path through the layout
        return any(
            isinstance(s, ast.Constant) and s.value in LAYOUT for s in (node.left, node.right)
        )
    if not isinstance(node, ast.JoinedStr):
        return False
    parts = node.values
    for a, b in itertools.pairwise(parts):  # `f"plan-{...}"`
        if isinstance(a, ast.Constant) and a.value.endswith(KEY_PREFIXES):
            return isinstance(b, ast.FormattedValue)
    return any(  # `f"{environment}-{name}"`
        isinstance(a, ast.FormattedValue)
        and isinstance(sep, ast.Constant)
        and sep.value in ("-", ".")
        and isinstance(b, ast.FormattedValue)
        and "env" in ast.unparse(a.value).lower()
        for a, sep, b in zip(parts, parts[1:], parts[2:], strict=False)
    )


def derived_keys_built(source: str) -> list[str]:
    """Where `source` builds a cluster's derived key itself: an f-string that puts a value
    after a key prefix (`f"plan-{...}"`) or joins an environment and a name with `-` or `.`,
    a bare prefix as a literal, or a path through the state layout's folder."""
    return [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(ast.parse(source))
        if _by_hand(node)
    ]


@pytest.mark.parametrize(
    "source",
    [
        'key = f"policy-{environment}-{name}"',
        'key = f"cluster-{env}-"',
        'name = f"{cluster.environment}-{cluster.name}"',
        'rid = f"cluster-mgmt.cluster.{e}.{n}"',
        'label = key.removeprefix("cluster-")',
        'path = root / "environments" / env / "clusters" / name',
    ],
)
def test_the_scan_finds_keys_built_by_hand(source):
    assert derived_keys_built(source)


def test_the_scan_passes_display_forms_and_other_names():
    source = (
        'a = f"cluster {environment}/{name}"\nb = f"cluster-mgmt-key-{x}"\n'
        'c = rule.get("environments")\nd = doc["clusters"]'
    )
    assert derived_keys_built(source) == []


def test_no_derived_key_is_built_outside_identity():
    built = {}
    for package in PRODUCTION:
        for path in sorted((REPO / package).rglob("*.py")):
            found = derived_keys_built(path.read_text())
            if found and path != REPO / "cluster_mgmt" / "identity.py":
                built[str(path.relative_to(REPO))] = found
    assert built == {}, "build these with cluster_mgmt.identity"


def test_the_cli_refuses_a_bad_identity_as_bad_input():
    from typer.testing import CliRunner

    from deployments.cli import app

    result = CliRunner().invoke(app, ["kubeconfig", "Prod", "web"])
    assert result.exit_code == 2  # USAGE: nothing was asked of the API
    assert "environment 'Prod' is not valid: use 1-20 lowercase letters" in result.output
