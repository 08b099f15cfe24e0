"""monitor-clusters: judge every cluster's health on a schedule (deployment every 5 minutes).

A sweep writes two task runs whatever the fleet size: the probes run concurrently inside
`sweep-cluster-health`, the signals are sent by `publish-cluster-health`. It takes no cluster
lock: a cluster in an operation is reported with its phase and not judged.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact
from prefect.states import Completed, Failed, State

from blocks import ClusterStateVolume
from blocks.loading import BlockNotFoundError, load_block
from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.health import HealthSettings
from flows.operation import install_redaction
from tasks.health import PROGRESS_ARTIFACT, publish_cluster_health, sweep_cluster_health


@flow(name="monitor-clusters")
def monitor_clusters(
    environment: str | None = None,
    state_volume: str = "default",
    sweeps_to_change: int = 2,
    expiry_warning_days: int = 30,
    probe_timeout_seconds: float = 5.0,
    concurrency: int = 200,
) -> State:
    """Probe every cluster (of `environment`, or all), update health.json, signal transitions.

    Args:
        environment: Only this environment's clusters; all when omitted.
        state_volume: Name of the `cluster-state-volume` block.
        sweeps_to_change: Consecutive sweeps that must agree before a verdict changes.
        expiry_warning_days: A certificate ending within this many days makes a cluster Degraded.
        probe_timeout_seconds: Time limit of each request to a cluster's API.
        concurrency: Clusters probed at once.
    """
    install_redaction()
    try:
        settings = HealthSettings(
            probe_timeout=probe_timeout_seconds,
            connect_timeout=min(3.0, probe_timeout_seconds),
            concurrency=concurrency,
            expiry_warning_days=expiry_warning_days,
            sweeps_to_change=sweeps_to_change,
        )
        volume = load_block(ClusterStateVolume, state_volume).volume()
        volume.check_usable()
        clusters = volume.clusters(environment)  # an invalid environment fails here
    except (ValueError, ClusterMgmtError, BlockNotFoundError) as exc:
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc))
    progress = create_progress_artifact(
        0.0, key=PROGRESS_ARTIFACT, description=f"0/{len(clusters)} clusters"
    )
    outcomes = sweep_cluster_health(volume, environment, settings, progress)
    counts = publish_cluster_health(volume, outcomes)
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return Completed(message=f"{len(outcomes)} clusters: {text}", data=counts)
