"""Block for the volume that holds every cluster's RKE state."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from cluster_mgmt.state import StateVolume


class ClusterStateVolume(Block):
    """Where RKE state lives: a folder on an EBS-backed volume mounted on the worker.

    Example:
        Load the state volume settings:
        ```python
        from blocks import ClusterStateVolume

        volume = ClusterStateVolume.load("BLOCK_NAME").volume()
        ```
    """

    _block_type_name = "Cluster State Volume"
    _block_type_slug = "cluster-state-volume"

    root: str = Field(
        default="/var/lib/cluster-mgmt",
        description="Absolute path of the state volume's mount point on the worker.",
    )
    history_limit: int = Field(
        default=20, ge=1, le=1000, description="History copies kept per cluster."
    )
    ebs_volume_id: str | None = Field(
        default=None, description="EBS volume backing the root, for snapshots of the volume."
    )
    aws_region: str | None = Field(default=None, description="AWS region of the EBS volume.")
    volume_id: str | None = Field(
        default=None,
        description=(
            "The id in the root's volume marker (written by `cluster-mgmt init`); when set, "
            "operations refuse a root that holds another volume."
        ),
    )

    def volume(self) -> StateVolume:
        """The state store on this volume."""
        return StateVolume(
            self.root,
            history_limit=self.history_limit,
            ebs_volume_id=self.ebs_volume_id,
            volume_id=self.volume_id,
        )
