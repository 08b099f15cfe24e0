"""The per-cluster Prefect global concurrency limit: one operation per cluster, across workers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from cluster_mgmt.identity import ClusterId

LOCK_WAIT_SECONDS = 4 * 3600
ATTEMPTS = 3
LEASE_SECONDS = 60  # renewed while held; a killed holder frees the cluster within ~75 s


def ensure_limit(client: SyncPrefectClient, name: str) -> None:
    """Make `name` an active limit of 1. Prefect creates none on the fly, skips inactive ones
    silently, and `upsert_global_concurrency_limit_by_name` leaves `active` alone."""
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        with suppress(ObjectAlreadyExists):  # a concurrent run created it first
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
            )
        return
    if not limit.active or limit.limit != 1:
        client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=1, active=True)
        )


@contextmanager
def cluster_lock(
    environment: str, name: str, timeout_seconds: float = LOCK_WAIT_SECONDS
) -> Iterator[None]:
    """Hold the cluster's limit (made active first: without `strict=True` and an active limit,
    Prefect would silently take no lock at all)."""
    lock = ClusterId(environment, name).lock_name
    for attempt in range(ATTEMPTS):
        with get_client(sync_client=True) as client:
            ensure_limit(client, lock)
        held = ExitStack()
        try:
            slot = concurrency(
                lock,
                occupy=1,
                strict=True,
                timeout_seconds=timeout_seconds,
                lease_duration=LEASE_SECONDS,
                # A brief API outage must not cancel a running `rke up`: the flock on the
                # volume still keeps operations apart.
                raise_on_lease_renewal_failure=False,
            )
            held.enter_context(slot)
        except ConcurrencySlotAcquisitionError:
            # a teardown finished while we waited and removed the limit: make it again
            if attempt == ATTEMPTS - 1:
                raise
            continue
        with held:
            yield
        return


def remove_cluster_lock(environment: str, name: str) -> None:
    """Delete the limit of a cluster that no longer exists (after its teardown)."""
    with get_client(sync_client=True) as client, suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(ClusterId(environment, name).lock_name)
