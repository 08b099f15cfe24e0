"""The flows run rke one way: through flows.operation.run_rke_step (status, artifact, rke, the
failure shown and raised, host keys checked again), never with their own copy of it."""

from __future__ import annotations

import ast
from pathlib import Path

FLOWS = Path(__file__).resolve().parent.parent / "flows"
RUN_RKE = {"provision", "update", "certificates", "etcd", "teardown"}


def calls(path: Path) -> set[str]:
    """Names of the functions `path` calls."""
    return {
        node.func.id
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


def test_flows_run_rke_only_through_run_rke_step():
    called = {p.stem: calls(p) for p in FLOWS.glob("*.py") if p.stem != "operation"}
    by_hand = {name for name, names in called.items() if names & {"run_rke", "verify_host_keys"}}
    assert by_hand == set(), "use flows.operation.run_rke_step"
    assert {name for name, names in called.items() if "run_rke_step" in names} == RUN_RKE
