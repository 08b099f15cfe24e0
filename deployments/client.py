"""What the CLI asks of the Prefect API: trigger deployments, follow runs, read cluster status."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_API_URL, PREFECT_UI_URL

from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.identity import ClusterId, status_key_prefix
from cluster_mgmt.state import StateError, Status

# Events (a block load emits one) are sent at exit; their "Still processing items" warning would
# be a second line under a one-line error.
logging.getLogger("EventsWorker").setLevel(logging.ERROR)

# Exit codes a script can rely on.
OK, FAILED, USAGE, UNREACHABLE, NOT_FOUND, DAMAGED = 0, 1, 2, 3, 4, 5


class ServiceError(ClusterMgmtError):
    """A one-line error for the operator, with the exit code the CLI leaves with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def api() -> Iterator[SyncPrefectClient]:
    """A Prefect client whose connection, auth, status and timeout failures become
    ServiceErrors (exit code 3)."""
    url = PREFECT_API_URL.value()
    if not url:
        raise ServiceError("PREFECT_API_URL is not set; point it at the Prefect API", USAGE)
    try:
        with get_client(sync_client=True) as client:
            yield client
    except httpx.HTTPError as exc:
        raise ServiceError(_api_trouble(url, exc), UNREACHABLE) from None


def _api_trouble(url: str, exc: httpx.HTTPError) -> str:
    """What went wrong talking to the API at `url`, in one line that says what to check."""
    name = exc.__class__.__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot reach the Prefect API at {url} ({name}); is the server running?"
    if isinstance(exc, httpx.TimeoutException):
        limit = PREFECT_API_REQUEST_TIMEOUT.value()
        return (
            f"the Prefect API at {url} did not answer in time ({name}, limit {limit} s, "
            "PREFECT_API_REQUEST_TIMEOUT); is it overloaded or stuck?"
        )
    if not isinstance(exc, httpx.HTTPStatusError):
        return f"talking to the Prefect API at {url} failed ({name}: {exc})"
    code = exc.response.status_code
    answer = f"{code} {exc.response.reason_phrase}".strip()
    if code == 401:
        return (
            f"the Prefect API at {url} refused the credentials ({answer}); set "
            "PREFECT_API_AUTH_STRING to the server's shared token"
        )
    if code == 403:
        return (
            f"the Prefect API at {url} refused access ({answer}); check PREFECT_API_AUTH_STRING "
            "and what stands in front of the API (proxy, load balancer rules)"
        )
    if code >= 500:
        return (
            f"the Prefect API at {url} answered {answer}; the server or the load balancer in "
            "front of it is failing, try again later"
        )
    return f"the Prefect API at {url} answered {answer} to {exc.request.method} {exc.request.url}"


def run_url(run_id: UUID) -> str:
    """The run's page in the UI the server's root opens (Prefect 3.9 serves the new UI under
    `/v2` and the older one at the root, which redirects to the default)."""
    ui = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    return f"{ui.rstrip('/')}{_default_ui_base(ui)}/runs/flow-run/{run_id}"


def _default_ui_base(ui: str) -> str:
    try:
        settings = httpx.get(f"{ui.rstrip('/')}/ui-settings", timeout=5).json()
        base = settings[f"{settings['default_ui']}_base_url"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        base = "/v2"  # Prefect 3.9's default UI
    return base.rstrip("/") if isinstance(base, str) else "/v2"


def phase_of(artifact: Any) -> str:
    """A cluster artifact's phase (its description reads `<PHASE>: <message>`)."""
    return (artifact.description or "").split(":", 1)[0].strip()


def trigger(deployment: str, parameters: dict[str, Any]) -> FlowRun:
    """Start a run of `deployment` (`<flow>/<name>`) and return at once."""
    with api() as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ServiceError(
                f"deployment {deployment} does not exist; run `cluster-mgmt bootstrap` first",
                NOT_FOUND,
            ) from None
        return client.create_flow_run_from_deployment(found.id, parameters=parameters)


def follow(
    run_id: UUID,
    on_change: Callable[[FlowRun], None],
    on_log: Callable[[str], None] | None = None,
    poll: float = 1.0,
) -> FlowRun:
    """Poll a run until it is final: `on_change` at each state change, `on_log` for each of its
    log lines (already redacted by the flow)."""
    last, seen = None, 0
    while True:
        with api() as client:
            run = client.read_flow_run(run_id)
            if on_log:
                logs = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                    sort=LogSort.TIMESTAMP_ASC,
                    offset=seen,
                )
                seen += len(logs)
                for log in logs:
                    on_log(log.message)
        if run.state and (run.state.type, run.state.name) != last:
            last = (run.state.type, run.state.name)
            on_change(run)
        if run.state and run.state.is_final():
            return run
        time.sleep(poll)


def cluster_artifacts(environment: str | None = None, name: str | None = None) -> list[Any]:
    """Latest status artifact of each cluster (or of one cluster)."""
    prefix = status_key_prefix(environment)
    if name:
        try:
            key = ArtifactCollectionFilterKey(
                any_=[ClusterId(environment or "", name).artifact_key]
            )
        except ValueError:  # not a valid environment/name: there is no such cluster
            return []
    else:
        key = ArtifactCollectionFilterKey(like_=prefix)  # a substring match on the server
    with api() as client:
        found = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(key=key))
    return sorted((a for a in found if a.key.startswith(prefix)), key=lambda a: a.key)


def secret_block_value(name: str) -> str | None:
    """The value of Prefect Secret block `name`, or None when there is none."""
    from prefect.blocks.system import Secret

    with api():
        try:
            return Secret.load(name).get()
        except ValueError:
            return None


def local_status(environment: str, name: str) -> Status | None:
    """status.json of a cluster, when the default state volume is mounted on this machine."""
    from blocks import ClusterStateVolume

    with api():
        try:
            volume = ClusterStateVolume.load("default").volume()
        except ValueError:
            return None
    if not volume.root.is_dir():
        return None
    try:
        cluster = volume.cluster(environment, name)
    except ValueError:  # not a valid environment/name: there is no such cluster
        return None
    try:
        return cluster.read_status()
    except StateError as exc:
        raise ServiceError(str(exc), DAMAGED) from None
