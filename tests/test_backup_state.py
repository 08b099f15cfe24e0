"""backup-state against moto's EC2 server (IAM authentication on), through a real Prefect
server: snapshot, tags, encryption, retention, refusals, unreachable endpoint, throttling."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from pydantic import SecretStr

from blocks import AwsCredentials, ClusterStateVolume
from cluster_mgmt.backup import OWNER_TAG, OWNER_VALUE, cluster_tags, description
from cluster_mgmt.backup import VolumeContents as Contents
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.state import StateVolume
from flows.backup import backup_state
from lab.aws import REGION, MotoServer, ThrottlingProxy, free_port
from tests.flowenv import failure_message

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


class Backup:
    """An EBS volume in moto, a state volume initialised for it, and the blocks naming both."""

    def __init__(self, tmp_path: Path, moto: MotoServer, *, encrypted: bool = True) -> None:
        self.moto = moto
        self.ec2 = moto.client()
        self.volume_id = self.ec2.create_volume(
            AvailabilityZone=f"{REGION}a", Size=8, Encrypted=encrypted
        )["VolumeId"]
        self.root = tmp_path / "state"
        self.state = StateVolume(self.root, ebs_volume_id=self.volume_id)
        self.state.initialise()
        tag = uuid.uuid4().hex[:8]
        self.names = {"state_volume": f"vol-{tag}", "aws_credentials": f"aws-{tag}"}
        self.save_volume(ebs_volume_id=self.volume_id, aws_region=REGION)
        self.save_credentials()

    def save_volume(self, **fields) -> None:
        ClusterStateVolume(root=str(self.root), **fields).save(
            self.names["state_volume"], overwrite=True
        )

    def save_credentials(self, **fields) -> None:
        values = {
            "aws_access_key_id": self.moto.access_key_id,
            "aws_secret_access_key": SecretStr(self.moto.secret_access_key),
            "endpoint_url": self.moto.url,
            **fields,
        }
        AwsCredentials(**values).save(self.names["aws_credentials"], overwrite=True)

    def cluster(self, name: str, phase: Phase) -> None:
        cluster = self.state.cluster("test", name)
        cluster.create()
        cluster.write_status(phase, Operation.PROVISION, "run-1", "")

    def snapshot(self, volume_id: str | None = None, ours: bool = True) -> str:
        tags = [{"Key": OWNER_TAG, "Value": OWNER_VALUE}] if ours else [{"Key": "a", "Value": "b"}]
        return self.ec2.create_snapshot(
            VolumeId=volume_id or self.volume_id,
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
        )["SnapshotId"]

    def snapshots(self, volume_id: str | None = None) -> dict[str, dict]:
        found = self.ec2.describe_snapshots(
            OwnerIds=["self"],
            Filters=[{"Name": "volume-id", "Values": [volume_id or self.volume_id]}],
        )["Snapshots"]
        return {s["SnapshotId"]: s for s in found}

    def run(self, **parameters):
        return backup_state(**self.names, **parameters, return_state=True)


@pytest.fixture
def backup(tmp_path, moto) -> Backup:
    return Backup(tmp_path, moto)


def test_snapshot_is_tagged_encrypted_and_old_ones_pruned(backup: Backup):
    backup.cluster("web", Phase.READY)
    backup.cluster("api", Phase.UPDATING)
    old = [backup.snapshot(), backup.snapshot()]
    foreign = backup.snapshot(ours=False)
    other_volume = backup.ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]
    elsewhere = backup.snapshot(other_volume)

    state = backup.run(retain=2)
    assert state.is_completed(), failure_message(state)
    result = state.result()
    snapshot = backup.snapshots()[result["snapshot_id"]]
    assert snapshot["State"] == "completed" and snapshot["Encrypted"] is True
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    assert tags[OWNER_TAG] == OWNER_VALUE
    assert tags["cluster-mgmt:cluster-count"] == "2"
    assert tags["cluster-mgmt:clusters-1"] == "test/api test/web"
    assert tags["cluster-mgmt:taken-at"].endswith("Z")
    assert "2 clusters; mid-operation: test/api(provision)" in snapshot["Description"]
    # retain=2: the new one and one old of ours; others' and other volumes' untouched
    assert len(result["deleted"]) == 1 and result["deleted"][0] in old
    assert set(backup.snapshots()) == {result["snapshot_id"], foreign, *old} - set(
        result["deleted"]
    )
    assert elsewhere in backup.snapshots(other_volume)

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"state-backup-{backup.volume_id}"])
            )
        )
    assert artifacts and result["snapshot_id"] in artifacts[-1].data
    assert result["deleted"][0] in artifacts[-1].data


def test_unencrypted_volume_gives_unencrypted_snapshot(tmp_path, moto):
    backup = Backup(tmp_path, moto, encrypted=False)
    state = backup.run()
    assert state.is_completed(), failure_message(state)
    assert backup.snapshots()[state.result()["snapshot_id"]]["Encrypted"] is False


def test_volume_block_without_ebs_volume_is_refused(backup: Backup):
    backup.save_volume(aws_region=REGION)
    before = backup.snapshots()
    state = backup.run()
    assert state.is_failed()
    assert "names no ebs_volume_id: set ebs_volume_id and aws_region" in failure_message(state)
    assert backup.snapshots() == before


def test_wrong_or_incomplete_credentials(backup: Backup):
    backup.save_credentials(aws_secret_access_key=SecretStr("not-the-secret"))
    state = backup.run()
    assert state.is_failed()
    message = failure_message(state)
    assert "AuthFailure" in message and "fix the keys" in message
    assert "not-the-secret" not in message

    backup.save_credentials(aws_secret_access_key=None)
    state = backup.run()
    assert state.is_failed()
    assert "has only one of aws_access_key_id and aws_secret_access_key" in failure_message(state)

    backup.names["aws_credentials"] = "no-such-block"
    assert "does not exist" in failure_message(backup.run())


def test_no_credentials_anywhere_is_refused_before_any_call(backup: Backup, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # an endpoint nobody listens on: a call would fail as unreachable, not as this refusal
    backup.save_credentials(
        aws_access_key_id=None,
        aws_secret_access_key=None,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    state = backup.run()
    assert state.is_failed()
    assert "has no keys and the worker has no AWS credentials" in failure_message(state)


def test_wrong_volume_mounted_is_refused(backup: Backup):
    backup.save_volume(ebs_volume_id="vol-0123456789abcdef0", aws_region=REGION)
    state = backup.run()
    assert state.is_failed()
    assert "the wrong volume is mounted" in failure_message(state)


def test_unreachable_endpoint_fails_after_the_configured_attempts(backup: Backup):
    backup.save_credentials(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    state = backup.run()
    assert state.is_failed()
    message = failure_message(state)
    assert "cannot reach EC2 at http://127.0.0.1:" in message and "after 2 attempts" in message


@pytest.mark.parametrize(("throttle", "attempts", "completes"), [(2, 3, True), (5, 2, False)])
def test_throttling_is_retried_with_a_bound(backup: Backup, throttle, attempts, completes):
    with ThrottlingProxy(backup.moto.port, "CreateSnapshot", throttle) as proxy:
        backup.save_credentials(endpoint_url=proxy.url, max_attempts=attempts)
        state = backup.run()
    assert proxy.seen == attempts  # each attempt reached EC2; none beyond the bound
    if completes:
        assert state.is_completed(), failure_message(state)
    else:
        assert state.is_failed()
        message = failure_message(state)
        assert "RequestLimitExceeded" in message and "after 2 attempts" in message
        assert not any(s.get("Tags") for s in backup.snapshots().values())


def test_cluster_tags_stay_within_aws_limits():
    ids = [f"env{i % 7}/cluster-name-{i:04d}" for i in range(2000)]
    tags = cluster_tags(ids)
    assert tags["cluster-mgmt:cluster-count"] == "2000"
    assert all(len(v) <= 256 and len(k) <= 128 for k, v in tags.items())
    assert len(tags) <= 45 and tags["cluster-mgmt:clusters-truncated"] == "true"
    listed = " ".join(v for k, v in tags.items() if "clusters-" in k and "truncated" not in k)
    assert listed.split() == ids[: len(listed.split())]
    busy = Contents(tuple(ids), tuple(f"{i}(update)" for i in ids))
    assert len(description("vol-0123456789abcdef0", busy, "2026-01-01T00:00:00Z")) <= 255


def test_deployment_is_scheduled_daily_and_the_cli_starts_it():
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from typer.testing import CliRunner

    from deployments.bootstrap import (
        BootstrapReport,
        _ensure_work_pool,
        deployment_specs,
        load_flow,
        schedules,
    )
    from deployments.cli import app

    spec = next(s for s in deployment_specs() if s["entrypoint"] == "flows.backup.backup_state")
    pool = f"backup-{uuid.uuid4().hex[:6]}"
    _ensure_work_pool(pool, "process", BootstrapReport())
    deployment_id = (
        load_flow(spec["entrypoint"])
        .to_deployment(name=spec["name"], schedules=schedules(spec), work_pool_name=pool)
        .apply()
    )
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
        assert [s.schedule.cron for s in deployment.schedules] == ["30 2 * * *"]
        started = CliRunner().invoke(app, ["backup-state", "--retain", "3"])
        assert started.exit_code == 0, started.output
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    manual = [r for r in runs if r.parameters]
    assert manual and manual[-1].parameters["retain"] == 3
    refused = CliRunner().invoke(app, ["backup-state", "--retain", "0"])
    assert refused.exit_code == 2
