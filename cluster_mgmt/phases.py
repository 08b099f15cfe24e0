"""A cluster's lifecycle phases and the operations that move it between them."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """The phase recorded in a cluster's status.json."""

    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    CONFIGURING = "CONFIGURING"
    READY = "READY"
    UPDATING = "UPDATING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    FAILED = "FAILED"


class Operation(StrEnum):
    """What a flow does to a cluster; names history entries and the lock holder."""

    PROVISION = "provision"
    TEARDOWN = "teardown"
    CONFIGURE = "configure"
    ROTATE_CREDENTIALS = "rotate-credentials"
    UPDATE = "update"
    ROTATE_CERTIFICATES = "rotate-certificates"
    SNAPSHOT_ETCD = "snapshot-etcd"
    RESTORE_ETCD = "restore-etcd"
    RECOVER_STATE = "recover-state"
