"""Unit tests of what an operation must do, decided from a cluster's state (no Prefect, no nodes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.operations import ProvisionStep, host_key_policy, provision_step
from cluster_mgmt.preflight import HostKeyPolicy
from cluster_mgmt.state import ClusterState, StateMissingError, StateVolume
from tests.test_state import CLUSTER_YML, provision

SPEC_HASH = "sha256:spec-1"
CONFIG = yaml.safe_load(CLUSTER_YML)
WITNESS = "the Prefect API's artifact cluster-prod-eu-web says RKE wrote state for it"
KNOWN_HOSTS = "10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForThisTest\n"


@pytest.fixture
def volume(tmp_path: Path) -> StateVolume:
    vol = StateVolume(tmp_path / "root")
    vol.initialise()
    return vol


@pytest.fixture
def new(volume: StateVolume) -> ClusterState:
    """A cluster directory a provision just created: RKE never wrote state for it."""
    cluster = volume.cluster("prod", "eu-web")
    cluster.create()
    return cluster


@pytest.fixture
def existing(new: ClusterState) -> ClusterState:
    """A cluster RKE provisioned with SPEC_HASH, left READY."""
    new.write_text("cluster.yml", CLUSTER_YML)
    provision(new)
    new.write_status("READY", "provision", "run-1", "rke up succeeded", SPEC_HASH)
    return new


# -- provision_step ----------------------------------------------------------------------------


def test_a_new_cluster_is_created(new: ClusterState) -> None:
    assert provision_step(new, SPEC_HASH, CONFIG, None) is ProvisionStep.CREATE


def test_a_first_provision_that_failed_before_rke_is_created_again(new: ClusterState) -> None:
    new.write_status("FAILED", "provision", "run-1", "preflight failed", "sha256:other")
    assert provision_step(new, SPEC_HASH, CONFIG, None) is ProvisionStep.CREATE


def test_the_same_spec_on_a_ready_cluster_is_a_no_op(existing: ClusterState) -> None:
    assert provision_step(existing, SPEC_HASH, CONFIG, None) is ProvisionStep.NOTHING_TO_DO
    assert provision_step(existing, SPEC_HASH, CONFIG, WITNESS) is ProvisionStep.NOTHING_TO_DO


@pytest.mark.parametrize("phase", ["FAILED", "PROVISIONING"])
def test_a_failed_or_interrupted_provision_resumes(existing: ClusterState, phase: str) -> None:
    existing.write_status(phase, "provision", "run-2", "rke up failed")
    assert provision_step(existing, SPEC_HASH, CONFIG, None) is ProvisionStep.RESUME


def test_a_changed_spec_is_refused_naming_what_changed(existing: ClusterState) -> None:
    changed = {**CONFIG, "kubernetes_version": "v1.30.5-rancher1-1"}
    with pytest.raises(RefusedError, match="changed: kubernetes_version") as refused:
        provision_step(existing, "sha256:spec-2", changed, None)
    assert "update-cluster" in str(refused.value)
    assert existing.read_status().spec_hash == SPEC_HASH  # nothing was changed


def test_a_changed_spec_outside_cluster_yml_is_refused_too(existing: ClusterState) -> None:
    with pytest.raises(RefusedError, match="changed: settings outside cluster.yml"):
        provision_step(existing, "sha256:spec-2", CONFIG, None)


def test_resuming_with_lost_state_is_refused(existing: ClusterState) -> None:
    existing.write_status("FAILED", "provision", "run-2", "rke up failed")
    existing.path("cluster.rkestate").unlink()
    with pytest.raises(StateMissingError, match=r"cluster\.rkestate is missing"):
        provision_step(existing, SPEC_HASH, CONFIG, None)


@pytest.mark.parametrize("directory", ["missing", "empty"])
def test_lost_state_that_the_api_witnesses_is_refused(volume: StateVolume, directory: str) -> None:
    cluster = volume.cluster("prod", "eu-web")
    if directory == "empty":
        cluster.create()
    with pytest.raises(StateMissingError) as refused:
        provision_step(cluster, SPEC_HASH, CONFIG, WITNESS)
    message = str(refused.value)
    assert message.startswith(f"refusing to provision prod/eu-web: {WITNESS}")
    assert "would mint a new CA" in message and "recover-cluster-state" in message
    assert message.endswith(
        "`prefect event emit cluster.deleted --resource-id cluster-mgmt.cluster.prod.eu-web`"
    )
    assert cluster.read_text("cluster.rkestate") is None
    assert provision_step(cluster, SPEC_HASH, CONFIG, None) is ProvisionStep.CREATE


# -- host_key_policy ---------------------------------------------------------------------------


def test_reject_is_kept_as_it_is(existing: ClusterState) -> None:
    existing.path("known_hosts").unlink(missing_ok=True)
    assert host_key_policy(existing, HostKeyPolicy.REJECT) == (HostKeyPolicy.REJECT, "")


def test_accept_new_applies_to_a_new_cluster(new: ClusterState) -> None:
    assert host_key_policy(new, HostKeyPolicy.ACCEPT_NEW) == (HostKeyPolicy.ACCEPT_NEW, "")


def test_accept_new_applies_while_known_hosts_is_kept(existing: ClusterState) -> None:
    existing.append_known_hosts([KNOWN_HOSTS.strip()])
    assert host_key_policy(existing, HostKeyPolicy.ACCEPT_NEW) == (HostKeyPolicy.ACCEPT_NEW, "")


def test_a_lost_known_hosts_falls_back_to_reject_naming_the_copy(existing: ClusterState) -> None:
    existing.append_known_hosts([KNOWN_HOSTS.strip()])
    existing.snapshot_history("provision")
    existing.path("known_hosts").unlink()
    policy, why = host_key_policy(existing, HostKeyPolicy.ACCEPT_NEW)
    assert policy is HostKeyPolicy.REJECT
    copy = existing.newest_history_copy("known_hosts")
    assert copy is not None and f"restore it from {copy}" in why
    assert why.startswith("accept-new is not applied: cluster prod/eu-web existed")


@pytest.mark.parametrize("known_hosts", [None, "\n"], ids=["missing", "empty"])
def test_a_lost_known_hosts_without_a_copy_falls_back_to_reject(
    existing: ClusterState, known_hosts: str | None
) -> None:
    if known_hosts is not None:
        existing.write_text("known_hosts", known_hosts)
    policy, why = host_key_policy(existing, HostKeyPolicy.ACCEPT_NEW)
    assert policy is HostKeyPolicy.REJECT
    assert "no history copy of it exists" in why and "node-ssh-access" in why
