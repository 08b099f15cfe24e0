"""Block for SSH access to customer nodes."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from cluster_mgmt.preflight import HostKeyPolicy


class NodeSshAccess(Block):
    """The SSH identity RKE and the preflight use on every node, and the host keys trusted.

    Example:
        Load the node SSH access:
        ```python
        from blocks import NodeSshAccess

        access = NodeSshAccess.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Node SSH Access"
    _block_type_slug = "node-ssh-access"

    user: str = Field(default="rke", description="Login user on every node (in the docker group).")
    private_key: SecretStr = Field(description="Private key (OpenSSH or PEM), unencrypted.")
    known_hosts: str = Field(
        default="", description="known_hosts lines of the nodes' host keys (ssh-keyscan)."
    )
    host_key_policy: Literal["reject", "accept-new"] = Field(
        default="reject",
        description="reject unknown host keys, or accept-new: record the first key, then enforce it.",
    )
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="TCP, banner and authentication timeout."
    )

    @property
    def policy(self) -> HostKeyPolicy:
        return HostKeyPolicy(self.host_key_policy)
