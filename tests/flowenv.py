"""A test's own blocks, state volume and cluster identity for running flows in-process."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings
from cluster_mgmt.spec import ClusterSpec, CustomerAccess, NodeSpec
from cluster_mgmt.state import StateVolume
from flows.configure import configure_cluster
from flows.credentials import rotate_customer_credentials
from flows.provision import provision_cluster
from flows.resources import apply_managed_resource, delete_managed_resource
from flows.teardown import teardown_cluster
from lab.kube import supervisor as lab_supervisor


class Env:
    """Blocks, state volume and a fresh cluster identity for one test.

    The lab supervisor's socket is exported, so `rke up` starts the cluster's Kubernetes API
    on its first control plane (and provision can configure the cluster).
    """

    def __init__(
        self, tmp_path: Path, lab, rke: str, monkeypatch: pytest.MonkeyPatch, supervisor=None
    ) -> None:
        self.lab = lab
        self.rke = rke
        self.supervisor = supervisor
        if supervisor is not None:
            monkeypatch.setenv(lab_supervisor.ENV, supervisor.socket_path)
        self.tag = uuid.uuid4().hex[:8]
        self.root = tmp_path / "state"
        StateVolume(self.root).initialise()
        self.blocks = {
            "policy": "default",  # no such block: the built-in rules
            "ssh_access": f"ssh-{self.tag}",
            "state_volume": f"vol-{self.tag}",
            "rke_settings": f"rke-{self.tag}",
        }
        ClusterStateVolume(root=str(self.root)).save(self.blocks["state_volume"])
        self.save_ssh(known_hosts=lab.known_hosts())
        RkeSettings(binary=rke).save(self.blocks["rke_settings"])
        self.faults = tmp_path / "faults.json"
        monkeypatch.setenv("LAB_RKE_FAULTS", str(self.faults))
        self.name = f"c{self.tag}"

    def save_ssh(self, **fields) -> None:
        NodeSshAccess(
            user=self.lab.user, private_key=SecretStr(self.lab.client_private_key), **fields
        ).save(self.blocks["ssh_access"], overwrite=True)

    def fault(self, **faults) -> None:
        self.faults.write_text(json.dumps(faults))

    def spec(self, count: int = 3, customer: CustomerAccess | None = None) -> ClusterSpec:
        roles = (
            [["controlplane", "etcd", "worker"]]
            if count == 1
            else [["controlplane", "etcd"]] + [["worker"]] * (count - 1)
        )
        nodes = [
            NodeSpec(address=n.address, port=n.port, roles=r)
            for n, r in zip(self.lab.nodes, roles, strict=False)
        ]
        extra = {"customer": customer} if customer else {}
        return ClusterSpec(environment="test", name=self.name, nodes=nodes, **extra)

    @property
    def cluster(self):
        return StateVolume(self.root).cluster("test", self.name)

    def provision(self, spec: ClusterSpec | None = None):
        return provision_cluster(spec=spec or self.spec(), **self.blocks, return_state=True)

    def teardown(self):
        return teardown_cluster(
            environment="test", name=self.name, **self.blocks, return_state=True
        )

    def configure(self):
        return configure_cluster(
            environment="test",
            name=self.name,
            state_volume=self.blocks["state_volume"],
            return_state=True,
        )

    def apply(self, resource_name: str, manifest: str):
        return apply_managed_resource(
            environment="test",
            name=self.name,
            resource_name=resource_name,
            manifest=manifest,
            state_volume=self.blocks["state_volume"],
            return_state=True,
        )

    def delete_resource(self, resource_name: str):
        return delete_managed_resource(
            environment="test",
            name=self.name,
            resource_name=resource_name,
            state_volume=self.blocks["state_volume"],
            return_state=True,
        )

    def rotate(self):
        return rotate_customer_credentials(
            environment="test",
            name=self.name,
            state_volume=self.blocks["state_volume"],
            return_state=True,
        )

    def api(self, mode: str) -> None:
        """Put the cluster's lab API up, down or hanging (the lab's control channel)."""
        self.supervisor.call("api", address=self.lab.nodes[0].address, mode=mode)

    def logins(self) -> list[int]:
        return [n.accepted_logins() for n in self.lab.nodes]


def failure_message(state) -> str:
    """The text of a failed run's exception ("" when it completed)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - we want the failure's text
        return str(exc)
    return ""


def assert_fails_cleanly(state, fix: str) -> None:
    """The run failed as the Prefect UI should show it: its logs (read through the API) have
    no traceback and exactly one error line, the run's one-line message, saying `fix`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    assert state.is_failed()
    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert logs, "the run's logs did not reach the API"
    text = "\n".join(log.message for log in logs)
    assert "Traceback" not in text, text
    errors = [log.message for log in logs if log.level >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and fix in errors[0], errors
    assert errors[0] == failure_message(state)
