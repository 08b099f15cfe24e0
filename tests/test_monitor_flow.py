"""monitor-clusters through a real Prefect server: task runs per sweep, one event per transition,
artifacts, the deployment's schedule and the alert automation firing once per transition."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.events.worker import EventsWorker

from blocks import ClusterStateVolume
from deployments.bootstrap import (
    BootstrapReport,
    _ensure_work_pool,
    apply_automations,
    deployment_specs,
    load_flow,
)
from deployments.bootstrap import schedules as yaml_schedules
from flows.monitor import monitor_clusters
from lab.fleet import Fleet

BASE = "127.3.0.1"  # this module's API servers: 127.3.0.1-10 and 127.3.1.1-2


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fleet(prefect_server, tmp_path_factory):
    env = "mon" + uuid.uuid4().hex[:6]
    with Fleet(tmp_path_factory.mktemp("fleet"), 10, 0.5, BASE, environment=env) as f:
        f.block = f"vol-{env}"
        ClusterStateVolume(root=str(f.volume.root)).save(f.block)
        yield f


def sweep(fleet, **options):
    state = monitor_clusters(
        environment=fleet.environment,
        state_volume=fleet.block,
        probe_timeout_seconds=2.5,
        return_state=True,
        **options,
    )
    assert state.is_completed(), state.message
    return state


def events_of(resource_prefix: str, expected: int) -> list[dict]:
    """The cluster.health.* events stored for resources starting with the prefix."""
    EventsWorker.drain_all(timeout=10)
    body = {
        "filter": {
            "event": {"prefix": ["cluster.health."]},
            "resource": {"id_prefix": [resource_prefix]},
        },
        "limit": 50,
    }

    def read():
        with get_client(sync_client=True) as client:
            found = client.request("POST", "/events/filter", json=body).json()["events"]
        return found if len(found) >= expected else None

    wait_for(read, 20)
    time.sleep(1)  # events persist asynchronously: read once more, so a duplicate would show
    return read() or []


def task_runs(state) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )


def artifacts(key: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def test_sweeps_signal_each_transition_once_in_few_task_runs(fleet):
    env = fleet.environment
    first = sweep(fleet)
    assert first.message.startswith("10 clusters")
    wanted = {e["name"]: e["verdict"] for e in fleet.expected.values()}
    events = events_of(f"cluster-mgmt.cluster.{env}.", 10)
    seen = {e["resource"]["prefect.resource.id"].rsplit(".", 1)[1]: e for e in events}
    assert len(events) == 10 and len(seen) == 10  # the first verdicts, one event each
    for name, verdict in wanted.items():
        assert seen[name]["event"] == f"cluster.health.{verdict.lower()}"
        assert seen[name]["payload"]["verdict"] == verdict
    degraded = next(e for e in seen.values() if e["event"] == "cluster.health.degraded")
    assert "etcd" in degraded["payload"]["reasons"][0]

    second = sweep(fleet)  # nothing changed: no event, no per-cluster artifact
    healthy = next(n for n, v in wanted.items() if v == "Healthy")
    address = fleet.expected[healthy]["address"]
    fleet.supervisor.call("etcd", address=address, healthy=False)
    try:
        third = sweep(fleet)  # seen once: pending
        fourth = sweep(fleet)  # seen twice: the verdict changes
    finally:
        fleet.supervisor.call("etcd", address=address, healthy=True)
    events = events_of(f"cluster-mgmt.cluster.{env}.", 11)
    assert len(events) == 11
    mine = [e["event"] for e in events if e["resource"]["prefect.resource.id"].endswith(healthy)]
    assert sorted(mine) == ["cluster.health.degraded", "cluster.health.healthy"]

    for state in (first, second, third, fourth):
        runs = wait_for(lambda s=state: (r := task_runs(s)) and len(r) >= 2 and r)
        assert 1 <= len(runs) <= 5, [r.name for r in runs]
    # the per-cluster artifact changes only on transitions: first verdict, then Degraded
    versions = artifacts(f"cluster-{env}-{healthy}")
    assert len(versions) == 2
    assert "Degraded" in versions[0].data or "Degraded" in versions[1].data
    fleet_table = artifacts("fleet-health")
    latest = max(fleet_table, key=lambda a: a.created)
    rows = json.loads(latest.data) if isinstance(latest.data, str) else latest.data
    row = next(r for r in rows if r["name"] == healthy)
    assert row["verdict"] == "Degraded" and "etcd" in row["reasons"]
    assert row["kubernetes_version"] == "v1.30.5" and row["nodes_ready"] == "1/1"
    assert int(row["days_to_first_cert_expiry"]) > 3000
    assert artifacts("fleet-health-progress")


def test_bad_parameters_fail_in_one_line_before_any_probe(fleet):
    state = monitor_clusters(environment="No-Such", state_volume=fleet.block, return_state=True)
    assert state.is_failed() and "invalid environment" in state.message
    state = monitor_clusters(state_volume="no-such-volume-block", return_state=True)
    assert state.is_failed() and "does not exist" in state.message
    state = monitor_clusters(state_volume=fleet.block, sweeps_to_change=0, return_state=True)
    assert state.is_failed() and "sweeps_to_change" in state.message


def test_the_deployment_is_scheduled_every_five_minutes(prefect_server):
    spec = next(s for s in deployment_specs() if s["entrypoint"].endswith("monitor_clusters"))
    flow = load_flow(spec["entrypoint"])
    assert flow.name == "monitor-clusters"
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    _ensure_work_pool(pool, "process", BootstrapReport())
    deployment = flow.to_deployment(
        name=f"sched-{uuid.uuid4().hex[:6]}",
        schedules=yaml_schedules(spec),
        work_pool_name=pool,
    )
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
        client.delete_deployment(deployment_id)
        client.delete_work_pool(pool)
    assert [s.schedule.interval.total_seconds() for s in stored.schedules] == [300]
    assert all(s.active for s in stored.schedules)


class Receiver:
    """A webhook receiver on an ephemeral loopback port, recording each POST body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_alert_automation_fires_once_per_transition(prefect_server, tmp_path):
    env = "alert" + uuid.uuid4().hex[:6]
    receiver = Receiver()
    block = f"alerts-{env}"
    CustomWebhookNotificationBlock(
        name="cluster alerts",
        url=receiver.url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,
    ).save(block)
    report = BootstrapReport()
    apply_automations(f"custom-webhook/{block}", report)
    apply_automations(f"custom-webhook/{block}", report)  # idempotent: updated, not doubled
    assert report.created == ["automation cluster-health-alert"]
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name("cluster-health-alert")) == 1
    try:
        with Fleet(tmp_path / "fleet", 2, 0.0, "127.3.1.1", environment=env) as fleet:
            fleet.block = f"vol-{env}"
            ClusterStateVolume(root=str(fleet.volume.root)).save(fleet.block)
            sweep(fleet, sweeps_to_change=1)  # Healthy: no alert
            address = fleet.expected["c00001"]["address"]
            fleet.supervisor.call("api", address=address, mode="down")
            sweep(fleet, sweeps_to_change=1)  # Unreachable: one alert
            sweep(fleet, sweeps_to_change=1)  # still Unreachable: no new alert
            events_of(f"cluster-mgmt.cluster.{env}.", 3)

            def mine():
                return [b for b in receiver.bodies if env in json.dumps(b)]

            assert wait_for(mine, 60)
            time.sleep(5)  # a duplicate would arrive within the automation's few seconds
            alerts = mine()
        assert len(alerts) == 1, alerts
        assert f"{env}-c00001 is Unreachable" in alerts[0]["subject"]
        assert "connection refused" in alerts[0]["body"]
    finally:
        receiver.close()
        with get_client(sync_client=True) as client:
            for automation in client.read_automations_by_name("cluster-health-alert"):
                client.delete_automation(automation.id)
