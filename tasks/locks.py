"""The per-cluster Prefect global concurrency limit: one operation per cluster, across workers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

LOCK_WAIT_SECONDS = 4 * 3600
LEASE_SECONDS = 60  # renewed while held; a killed holder frees the cluster within ~75 s


def cluster_lock_name(environment: str, name: str) -> str:
    """`cluster-<env>-<name>`; unambiguous because environments contain no dash."""
    return f"cluster-{environment}-{name}"


@contextmanager
def cluster_lock(
    environment: str, name: str, timeout_seconds: float = LOCK_WAIT_SECONDS
) -> Iterator[None]:
    """Hold the cluster's limit (created first: Prefect does not create limits on the fly,
    and without `strict=True` a missing limit silently means no lock at all)."""
    lock = cluster_lock_name(environment, name)
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(lock, limit=1)
        except ObjectAlreadyExists:
            pass  # a concurrent run created it between our read and our create
    with concurrency(
        lock,
        occupy=1,
        strict=True,
        timeout_seconds=timeout_seconds,
        lease_duration=LEASE_SECONDS,
        # A brief API outage must not cancel a running `rke up`: the flock on the volume
        # still keeps operations apart.
        raise_on_lease_renewal_failure=False,
    ):
        yield
