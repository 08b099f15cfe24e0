"""Shards of a fleet: which worker sweeps which cluster, and what a sharded sweep left out.

A cluster belongs to shard `sha256("<env>/<name>") mod shards`: the same on every machine and
in every Python process (unlike `hash()`, which is salted per process), and independent of the
order clusters are listed in. Each cluster therefore has exactly one shard, so one writer of its
health.json per sweep.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_SHARDS = 256


def check_shards(shards: int, shard: int | None) -> None:
    """ValueError saying what to fix when `shards`/`shard` cannot describe a sharded sweep."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    if shard is not None and not 0 <= shard < shards:
        raise ValueError(f"shard must be between 0 and shards - 1 = {shards - 1}, got {shard}")


def shard_of(environment: str, name: str, shards: int) -> int:
    """The shard of cluster `<environment>/<name>` among `shards` (stable across processes)."""
    digest = hashlib.sha256(f"{environment}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def assign(keys: Iterable[tuple[str, str]], shards: int) -> dict[int, list[tuple[str, str]]]:
    """The `(environment, name)` keys of each shard (every shard present, possibly empty)."""
    assigned: dict[int, list[tuple[str, str]]] = {i: [] for i in range(shards)}
    for environment, name in keys:
        assigned[shard_of(environment, name, shards)].append((environment, name))
    return assigned


def row_verdict(row: dict[str, Any]) -> str:
    """The verdict a fleet-table row counts as (as `tasks.health.summary` counts outcomes)."""
    verdict = str(row.get("verdict", ""))
    if verdict.startswith("torn down"):
        return "gone"
    return verdict.split(" (", 1)[0] or "not judged"


@dataclass
class ShardedSweep:
    """The merge of a sharded sweep: the rows the shards reported and the shards that failed.

    Clusters of a failed shard (and any cluster a completed shard did not report) are listed
    as not swept, with a row of their own, so the fleet table still names every cluster.
    """

    assigned: dict[int, list[tuple[str, str]]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # shard -> why

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows

    def fail(self, shard: int, reason: str) -> None:
        self.failed[shard] = reason

    @property
    def not_swept(self) -> list[tuple[str, str]]:
        reported = {(r.get("environment"), r.get("name")) for r in self.rows}
        missing = [k for keys in self.assigned.values() for k in keys if k not in reported]
        return sorted(missing)

    def table(self) -> list[dict[str, Any]]:
        """Every cluster's row, sorted; a row saying "not swept" (and why) for those left out."""
        where = {k: i for i, keys in self.assigned.items() for k in keys}
        extra = []
        for environment, name in self.not_swept:
            shard = where[(environment, name)]
            why = self.failed.get(shard, "completed without reporting it")
            extra.append(
                {
                    "environment": environment,
                    "name": name,
                    "phase": "-",
                    "verdict": "not swept",
                    "since": "-",
                    "reasons": f"shard {shard}: {why}",
                }
            )
        return sorted(self.rows + extra, key=lambda r: (r["environment"], r["name"]))

    def counts(self) -> dict[str, int]:
        counts = Counter(row_verdict(r) for r in self.rows)
        if self.not_swept:
            counts["not swept"] = len(self.not_swept)
        return dict(counts)
