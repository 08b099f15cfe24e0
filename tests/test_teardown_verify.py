"""teardown-cluster checks every node for what `rke remove` left: real sshd nodes, lab rke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blocks import RkeSettings
from cluster_mgmt.leftovers import VERIFICATION_FILE, parse
from cluster_mgmt.preflight import CommandResult
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 220

pytestmark = pytest.mark.usefixtures("prefect_server")


def verification(state) -> dict:
    return json.loads((Path(state.result()["archive"]) / VERIFICATION_FILE).read_text())


def test_clean_teardown_is_verified_on_every_node(env: Env):
    assert env.provision().is_completed()
    down = env.teardown()
    assert down.is_completed(), failure_message(down)
    result = down.result()
    assert result["phase"] == "DELETED"
    assert result["message"].endswith("; 3 nodes verified clean")
    doc = verification(down)
    assert [n["result"] for n in doc["nodes"]] == ["clean"] * 3
    # rke's first `up` leaves its state-reading helper on every node, as real rke does
    assert [n["rke_helpers"] for n in doc["nodes"]] == [["cluster-state-deployer"]] * 3
    assert "/var/lib/etcd" in doc["checked_paths"] and "/opt/rke" in doc["checked_paths"]


def _docker(node, *args: str) -> None:
    """The node's docker, as a workload run by the kubelet would have used it."""
    environment = {**os.environ, "LAB_NODE_ROOT": str(node.root)}
    subprocess.run([sys.executable, "-m", "lab.docker", *args], env=environment, check=True)


def test_leftovers_and_unreachable_nodes_are_reported(env: Env, tmp_path: Path):
    assert env.provision().is_completed()
    first, second, third = env.lab.nodes
    # A workload container: rke remove deletes only its own containers.
    _docker(second, "run", "-d", "--name", "k8s_web_nginx-0_default", "nginx:1.27")
    # Something wrote etcd data again after rke's cleaner emptied the folder.
    etcd_file = first.root / "var/lib/etcd/member/snap/db"
    rke = tmp_path / "rke"
    rke.write_text(
        f'#!/bin/sh\n{env.rke} "$@"; rc=$?\n'
        f"mkdir -p {etcd_file.parent} && echo data > {etcd_file}\nexit $rc\n"
    )
    rke.chmod(0o755)
    RkeSettings(binary=str(rke)).save(env.blocks["rke_settings"], overwrite=True)
    third.stop()
    try:
        down = env.teardown()
    finally:
        third.start()
    assert down.is_completed(), failure_message(down)
    result = down.result()
    assert result["phase"] == "DELETED"
    assert result["message"].endswith("; leftovers on 2 nodes; 1 node unverified")
    nodes = verification(down)["nodes"]
    assert [n["result"] for n in nodes] == ["leftovers", "leftovers", "unverified"]
    assert nodes[0]["paths"] == ["/var/lib/etcd"] and not nodes[0]["containers"]
    assert nodes[1]["containers"] == ["k8s_web_nginx-0_default"] and not nodes[1]["paths"]
    assert "refused" in nodes[2]["unverified"] and third.address in nodes[2]["node"]


def _outcome(stdout: str, status: int = 0, error: str | None = None) -> CommandResult:
    return CommandResult("10.0.0.1", 22, error is None, status, stdout, "boom", error)


def test_a_node_that_cannot_be_fully_checked_is_never_clean():
    assert parse(_outcome("")).result == "clean"
    helper = parse(_outcome("container cluster-state-deployer\n"))
    assert helper.result == "clean" and helper.rke_helpers == ("cluster-state-deployer",)
    no_docker = parse(_outcome("path /opt/rke\ndocker-unavailable\n"))
    assert no_docker.paths == ("/opt/rke",) and "containers not checked" in no_docker.unverified
    assert parse(_outcome("docker-unavailable\n")).result == "unverified"
    assert "not readable" in parse(_outcome("unreadable /var/lib/etcd\n")).unverified
    assert "exit 2" in parse(_outcome("", status=2)).unverified
    assert parse(_outcome("", error="TCP connection refused")).result == "unverified"
