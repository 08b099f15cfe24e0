"""Flow backup-state: an EBS snapshot of the state volume, retention by count."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, State
from pydantic import Field

from blocks import AwsCredentials, ClusterStateVolume
from blocks.loading import load_block
from cluster_mgmt.backup import prepare, snapshot_target
from cluster_mgmt.patterns import BlockName
from cluster_mgmt.redact import register_secret
from flows.operation import expected_failures
from tasks.ebs import take_snapshot


@flow(name="backup-state", validate_parameters=False)
@expected_failures
def backup_state(
    state_volume: BlockName = "default",
    aws_credentials: BlockName = "default",
    retain: Annotated[int, Field(ge=1, le=1000)] = 7,
) -> State:
    """Take an EBS snapshot of the state volume, tagged with the clusters it holds, wait for
    it, then delete this service's older snapshots of the volume beyond the newest `retain`.

    Refused before any AWS call when the volume block names no EBS volume or region, the
    credentials block is missing or wrong, or the mounted volume is not the expected one.
    Takes no cluster lock: every write on the volume is atomic, so a crash-consistent
    snapshot is consistent; clusters with an operation in progress are named in the
    snapshot's description.

    Args:
        state_volume: Name of the `cluster-state-volume` block (`ebs_volume_id`, `aws_region`).
        aws_credentials: Name of the `cluster-mgmt-aws-credentials` block.
        retain: How many of this service's snapshots of the volume to keep, this one included.
    """
    volume_block = load_block(ClusterStateVolume, state_volume)
    target = snapshot_target(volume_block.ebs_volume_id, volume_block.aws_region, state_volume)
    credentials = load_block(AwsCredentials, aws_credentials)
    for secret in (credentials.aws_secret_access_key, credentials.aws_session_token):
        if secret:
            register_secret(secret.get_secret_value())
    credentials.check(aws_credentials)
    contents = prepare(volume_block.volume())
    ec2 = credentials.ec2_client(target.region, name=aws_credentials)
    report = take_snapshot(ec2, target, contents, retain)
    deleted = f", deleted {len(report.deleted)} old" if report.deleted else ""
    message = (
        f"snapshot {report.snapshot_id} of {target.volume_id} completed "
        f"({len(contents.clusters)} clusters{deleted})"
    )
    get_run_logger().info("%s", message)
    return Completed(message=message, data=report.summary())
