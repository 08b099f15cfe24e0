"""The volume marker: proof that a folder is the initialised state volume it claims to be.

A state root that is missing, empty or another volume must never look like a volume without
clusters: re-sending a known spec would then run `rke up` with no state and RKE would mint a
new CA. So the root is initialised once, explicitly, which writes the marker; operations
refuse a root without it, or whose marker differs from what the `cluster-state-volume` block
expects.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cluster_mgmt.atomic import FILE_MODE, atomic_write
from cluster_mgmt.errors import StateError

MARKER = "cluster-mgmt-volume.json"


class VolumeError(StateError):
    """The state volume is missing, not initialised, the wrong one, or not writable."""


@dataclass(frozen=True)
class VolumeMarker:
    """What `<root>/cluster-mgmt-volume.json` records about the volume."""

    volume_id: str
    created_at: str
    ebs_volume_id: str | None = None

    @classmethod
    def new(cls, ebs_volume_id: str | None) -> VolumeMarker:
        return cls(str(uuid.uuid4()), datetime.now(UTC).isoformat(), ebs_volume_id)


def read_marker(root: Path) -> VolumeMarker | None:
    """The marker of `root`; None if there is none; VolumeError if it is not a marker."""
    path = root / MARKER
    try:
        doc = json.loads(path.read_bytes())
        return VolumeMarker(
            volume_id=str(doc["volume_id"]),
            created_at=str(doc["created_at"]),
            ebs_volume_id=doc.get("ebs_volume_id"),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise VolumeError(
            f"{path} is not a volume marker ({exc.__class__.__name__}); restore it from a "
            "backup of the volume, never re-initialise a volume that holds clusters"
        ) from None


def write_marker(root: Path, marker: VolumeMarker) -> None:
    """Write the marker atomically (0600)."""
    atomic_write(root / MARKER, json.dumps(asdict(marker), indent=2) + "\n", FILE_MODE)


def check_marker(
    root: Path, marker: VolumeMarker, *, ebs_volume_id: str | None, volume_id: str | None
) -> None:
    """VolumeError unless `marker` is the volume the block expects."""
    if volume_id and marker.volume_id != volume_id:
        raise VolumeError(
            f"state volume root {root} is volume {marker.volume_id}, but the "
            f"cluster-state-volume block expects {volume_id}: another volume is mounted there. "
            "Mount the right volume, or fix the block's volume_id if the volume was replaced "
            "on purpose"
        )
    if ebs_volume_id and marker.ebs_volume_id != ebs_volume_id:
        raise VolumeError(
            f"state volume root {root} was initialised for EBS volume "
            f"{marker.ebs_volume_id or '(none)'}, but the cluster-state-volume block names "
            f"{ebs_volume_id}: the wrong volume is mounted. Attach and mount {ebs_volume_id} "
            "at the root, or fix the block"
        )
