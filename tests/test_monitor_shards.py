"""A sharded monitor sweep on a Prefect server on PostgreSQL, across two process workers.

The shard of a cluster is a stable hash; a sweep's parent runs one sub-run of the monitor's own
deployment per shard on whichever worker takes it (each worker runs one flow run at a time), a
shard whose process is killed mid-sweep is run again and judges only what its first attempt did
not reach (damping proves each cluster was judged once), and a shard that cannot run makes the
parent fail naming the clusters it did not sweep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments.runner import EntrypointType
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from blocks import ClusterStateVolume
from cluster_mgmt.health import HealthSettings, read_health, run_sweep
from cluster_mgmt.shards import ShardedSweep, assign, check_shards, row_verdict, shard_of
from deployments.bootstrap import load_flow
from flows.monitor import monitor_clusters
from lab.embedded import QUIET, EmbeddedServer, EmbeddedWorker
from lab.fleet import Fleet
from lab.postgres import LabPostgres, migrated_template

REPO = Path(__file__).resolve().parent.parent
BASE = "127.4.0.1"  # this module's fleet: 127.4.0.1-8
ENVIRONMENT = "shards"
CLUSTERS = 8
HANG = 4  # lab.fleet's plan puts its second fault, a hanging API server, on the fifth cluster
PROBE_TIMEOUT = 5.0

# -- the assignment (plain Python) ---------------------------------------------------------------


def test_a_cluster_has_one_shard_stable_across_processes():
    keys = [("prod", f"c{i:04d}") for i in range(2000)]
    assigned = assign(keys, 4)
    assert sorted(k for part in assigned.values() for k in part) == sorted(keys)
    assert all(350 < len(part) < 650 for part in assigned.values())  # spread out
    # another interpreter (its own hash() salt) assigns the same shards
    code = (
        "import json, sys; from cluster_mgmt.shards import shard_of; "
        "print(json.dumps([shard_of('prod', f'c{i:04d}', 4) for i in range(2000)]))"
    )
    env = os.environ | {"PYTHONHASHSEED": "random"}
    other = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    assert json.loads(other.stdout) == [shard_of(e, n, 4) for e, n in keys]
    assert shard_of("prod", "c0001", 1) == 0


def test_shard_parameters_are_checked_in_one_line():
    check_shards(4, 3)
    for shards, shard, says in (
        (0, None, "shards must be"),
        (4, 4, "shard must be"),
        (2, -1, "0 and"),
    ):
        with pytest.raises(ValueError, match=says):
            check_shards(shards, shard)


def test_the_merge_names_every_cluster_a_failed_shard_left_out():
    keys = [("e", f"c{i}") for i in range(10)]
    merged = ShardedSweep(assign(keys, 3))
    failed = 1
    for shard, part in merged.assigned.items():
        if shard == failed:
            merged.fail(shard, "its run ended CRASHED")
            continue
        merged.add(
            [
                {"environment": e, "name": n, "verdict": "Healthy (Degraded seen 1x)"}
                for e, n in part
            ]
        )
    assert merged.not_swept == sorted(merged.assigned[failed])
    table = merged.table()
    assert [(r["environment"], r["name"]) for r in table] == sorted(keys)
    missing = [r for r in table if r["verdict"] == "not swept"]
    assert len(missing) == len(merged.assigned[failed])
    assert all(r["reasons"] == f"shard {failed}: its run ended CRASHED" for r in missing)
    assert merged.counts() == {"Healthy": 10 - len(missing), "not swept": len(missing)}
    assert row_verdict({"verdict": "torn down during the sweep"}) == "gone"


def test_a_sweep_judges_a_cluster_once_however_often_its_shard_is_run(tmp_path):
    """A retried shard skips what its sweep recorded already (and gives its transition again);
    another sweep judges it afresh."""
    with Fleet(tmp_path / "fleet", 2, 0.0, "127.4.1.1", environment="once") as fleet:
        cluster = fleet.volume.cluster("once", "c00000")
        settings = HealthSettings(probe_timeout=2.5, sweeps_to_change=2)
        first = run_sweep([cluster], settings, sweep_id="s1")[0]
        assert first.transition.verdict == "Healthy" and first.record.sweep == "s1"
        fleet.supervisor.call("etcd", address=fleet.expected["c00000"]["address"], healthy=False)
        again = run_sweep([cluster], settings, sweep_id="s1")[0]  # s1's shard run again
        assert again.record == first.record and again.transition == first.transition
        assert again.row() == first.row()
        second = run_sweep(fleet.volume.clusters(), settings, sweep_id="s2")
        assert second[0].record.candidate["seen"] == 1 and second[1].record.sweep == "s2"
        repeat = run_sweep([cluster], settings, sweep_id="s2")[0]
        assert repeat.record.candidate["seen"] == 1 and repeat.transition is None
        unsharded = run_sweep([cluster], settings)[0]  # every plain sweep counts
        assert unsharded.record.verdict == "Degraded" and unsharded.record.sweep is None


# -- a sharded sweep through PostgreSQL, two workers ----------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """PostgreSQL, a Prefect server on it, a pool with two workers (one run at a time each),
    the monitor's deployment and a lab fleet of 8 clusters; everything stopped at the end."""
    home = tmp_path_factory.mktemp("shards")
    auth = "shards:" + uuid.uuid4().hex
    pool = "shards"
    with contextlib.ExitStack() as running:
        database = running.enter_context(LabPostgres(template=migrated_template(REPO / ".lab")))
        server = running.enter_context(
            EmbeddedServer(
                home=home / "server", auth_string=auth, ui=False, database_url=database.url
            )
        )
        fleet = running.enter_context(
            Fleet(home / "fleet", CLUSTERS, 0.25, BASE, environment=ENVIRONMENT)
        )
        client = running.enter_context(SyncPrefectClient(server.api_url, auth_string=auth))
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: auth}):
            ClusterStateVolume(root=str(fleet.volume.root)).save("fleet")
            load_flow("flows.monitor.monitor_clusters").to_deployment(
                name="default", work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH
            ).apply()
        workers = [
            running.enter_context(
                EmbeddedWorker(
                    home=home / name,
                    api_url=server.api_url,
                    auth_string=auth,
                    pool=pool,
                    limit=1,
                    name=name,
                )
            )
            for name in ("worker-a", "worker-b")
        ]
        yield SimpleNamespace(
            server=server,
            auth=auth,
            home=home,
            fleet=fleet,
            pool=pool,
            client=client,
            workers=workers,
        )


def start_sweep(stack, **parameters) -> subprocess.Popen:
    """The parent of a sharded sweep, as a flow run of its own process (like the scheduler's)."""
    parameters = {
        "environment": ENVIRONMENT,
        "state_volume": "fleet",
        "probe_timeout_seconds": PROBE_TIMEOUT,
        "shards": 2,
        **parameters,
    }
    code = (
        "import json, sys; from flows.monitor import monitor_clusters; "
        "s = monitor_clusters(**json.loads(sys.argv[1]), return_state=True); "
        "print(json.dumps({'type': s.type.value, 'message': s.message}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | QUIET
    env |= {
        "PREFECT_API_URL": stack.server.api_url,
        "PREFECT_API_AUTH_STRING": stack.auth,
        "PREFECT_HOME": str(stack.home / "parent"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(parameters)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(parent: subprocess.Popen) -> dict:
    out, err = parent.communicate(timeout=180)
    assert parent.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def records(fleet) -> dict:
    return {n: read_health(fleet.volume.cluster(ENVIRONMENT, n)) for n in fleet.expected}


def sub_runs(stack, parent_id: str) -> dict[str, object]:
    runs = stack.client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(parent_id)])
        )
    )
    return {r.name: r for r in runs}


def fleet_table(stack) -> list[dict]:
    artifacts = stack.client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fleet-health"]))
    )
    latest = max(artifacts, key=lambda a: a.created)
    return json.loads(latest.data) if isinstance(latest.data, str) else latest.data


def wait_for(check, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def test_a_sharded_sweep_judges_each_cluster_once_though_a_shard_is_killed(stack):
    fleet = stack.fleet
    names = list(fleet.expected)
    shard = {n: shard_of(ENVIRONMENT, n, 2) for n in names}
    hung = names[HANG]
    assert fleet.expected[hung]["fault"] == "api-hang"
    victim = shard[hung]  # the shard to kill while it waits for the hanging API server
    flip = next(n for n in names if shard[n] == victim and fleet.expected[n]["fault"] is None)
    settings = HealthSettings(probe_timeout=PROBE_TIMEOUT, connect_timeout=3.0)
    run_sweep(fleet.volume.clusters(ENVIRONMENT), settings)  # the verdicts before: no sweep id
    before = records(fleet)
    assert {n: r.verdict for n, r in before.items()} == {
        n: e["verdict"] for n, e in fleet.expected.items()
    }

    # kill the victim shard's process once it judged `flip`, while it waits for `hung`
    fleet.supervisor.call("etcd", address=fleet.expected[flip]["address"], healthy=False)
    try:
        parent = start_sweep(stack)
        sweep_id = wait_for(lambda: read_health(fleet.volume.cluster(ENVIRONMENT, flip)).sweep, 120)
        run = wait_for(lambda: sub_runs(stack, sweep_id).get(f"shard-{victim}-of-2-try-1"), 10)
        run = wait_for(
            lambda: (r := stack.client.read_flow_run(run.id)).infrastructure_pid and r, 10
        )
        assert read_health(fleet.volume.cluster(ENVIRONMENT, hung)).sweep is None  # not yet
        os.kill(int(str(run.infrastructure_pid).rsplit(":", 1)[-1]), signal.SIGKILL)
        result = finish(parent)
    finally:
        fleet.supervisor.call("etcd", address=fleet.expected[flip]["address"], healthy=True)
    assert result["type"] == "COMPLETED", result
    runs = sub_runs(stack, sweep_id)
    assert sorted(runs) == sorted(
        ["shard-0-of-2-try-1", "shard-1-of-2-try-1", f"shard-{victim}-of-2-try-2"]
    )
    assert runs[f"shard-{victim}-of-2-try-1"].state.type == StateType.CRASHED
    assert all(r.state.is_completed() for n, r in runs.items() if n.endswith("try-2"))
    assert runs[f"shard-{1 - victim}-of-2-try-1"].state.is_completed()
    # each worker runs one flow run at a time: the first two shard runs went one to each
    ran = {  # a flow-run process's output goes to its worker's log
        w.name: {r.name for r in runs.values() if f"/flow-run/{r.id}" in w.log_path.read_text()}
        for w in stack.workers
    }
    firsts = [{n for n in took if n.endswith("try-1")} for took in ran.values()]
    assert sorted(len(f) for f in firsts) == [1, 1], ran

    after = records(fleet)
    assert all(r.sweep == sweep_id for r in after.values())  # every cluster, by this sweep
    # judged once by this sweep: Degraded seen once, so the verdict has not changed yet
    assert after[flip].verdict == "Healthy"
    assert after[flip].candidate == {**after[flip].candidate, "verdict": "Degraded", "seen": 1}
    assert after[hung].verdict == "Unreachable" and after[hung].checked_at > before[hung].checked_at
    rows = {r["name"]: r for r in fleet_table(stack)}
    assert sorted(rows) == names
    assert rows[flip]["verdict"] == "Healthy (Degraded seen 1x)"
    assert rows[hung]["verdict"] == "Unreachable"


def test_a_shard_that_never_runs_fails_the_sweep_naming_its_clusters(stack):
    fleet = stack.fleet
    before = records(fleet)
    stack.client.update_work_pool(stack.pool, WorkPoolUpdate(is_paused=True))
    try:
        result = finish(start_sweep(stack, shard_attempts=2, shard_timeout_seconds=1))
    finally:
        stack.client.update_work_pool(stack.pool, WorkPoolUpdate(is_paused=False))
    assert result["type"] == "FAILED"
    assert (
        "shard 0 failed: its run did not finish within 1 s (after 2 attempts)" in result["message"]
    )
    assert f"{ENVIRONMENT}/{next(iter(fleet.expected))}" in result["message"]
    assert records(fleet) == before  # nothing swept
    rows = fleet_table(stack)
    assert len(rows) == CLUSTERS and all(r["verdict"] == "not swept" for r in rows)
    waiting = [r.name for r in stack.client.read_flow_runs() if r.state.is_scheduled()]
    assert waiting == []  # the shards' runs that never started were cancelled


def test_bad_shard_parameters_fail_in_one_line_before_any_probe(prefect_server):
    for options, says in (
        ({"shards": 2, "shard": 2}, "shard must be between 0 and shards - 1 = 1, got 2"),
        ({"shards": 0}, "shards must be between 1 and 256"),
        ({"sweep": "x"}, "sweep is set by a sharded sweep"),
        ({"shards": 2, "shard_attempts": 0}, "shard_attempts must be at least 1"),
    ):
        state = monitor_clusters(state_volume="no-such-volume", return_state=True, **options)
        assert state.is_failed() and says in state.message, state.message
