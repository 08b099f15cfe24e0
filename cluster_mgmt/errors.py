"""The domain's errors: each message says what is wrong and what to do about it."""

from __future__ import annotations


class ClusterMgmtError(Exception):
    """An expected failure of an operation; its message is meant for the operator as is."""


class RefusedError(ClusterMgmtError):
    """The operation was refused as asked: nothing was changed and the cluster stays as it was."""


class StateError(ClusterMgmtError):
    """Something is wrong with the state volume; the message says what and what to do."""
