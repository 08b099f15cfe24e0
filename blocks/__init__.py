"""Prefect blocks: every credential and setting an operator configures."""

from blocks.aws import AwsCredentials
from blocks.policy import PolicyService
from blocks.rke import RkeSettings
from blocks.ssh import NodeSshAccess
from blocks.state_volume import ClusterStateVolume

__all__ = ["AwsCredentials", "ClusterStateVolume", "NodeSshAccess", "PolicyService", "RkeSettings"]
