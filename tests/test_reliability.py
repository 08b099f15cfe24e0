"""A short run of the reliability trials through deployments and a worker (the long one:
benchmarks/reliability.py), and the harness's own checks, which must be able to fail."""

from __future__ import annotations

import random
import subprocess
import uuid
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Failed

from lab.kube.supervisor import ENV
from lab.reliability import (
    ALLOWED,
    Lab,
    Tally,
    calibrate,
    files_problems,
    judge_race,
    kill,
    r1_trial,
    r2_race,
    service,
)
from tests.conftest import AUTH_STRING
from tests.flowenv import Env

LAB_FIRST_ADDRESS = 80

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def svc(prefect_server, lab_rke, lab_supervisor, tmp_path_factory):
    """A pool of its own, one process worker, deployments of provision and teardown."""
    with service(
        tmp_path_factory.mktemp("reliability"),
        prefect_server.api_url,
        AUTH_STRING,
        lab_rke,
        f"rke-reliability-{uuid.uuid4().hex[:6]}",
        {ENV: lab_supervisor.socket_path},
    ) as started:
        yield started


def lab_of(env: Env, svc) -> Lab:
    blocks = {**env.blocks, "rke_settings": svc.rke_settings}
    return Lab(svc, blocks, env.root, env.spec(count=1).model_dump(mode="json"))


# -- the harness's checks ---------------------------------------------------------------------


def test_files_problems_names_missing_and_damaged_files(tmp_path):
    (tmp_path / "cluster.yml").write_text("nodes: []\n")
    (tmp_path / "kube_config_cluster.yml").write_text("LS0t")
    had = {"cluster.rkestate", "kube_config_cluster.yml", "cluster.yml"}
    assert files_problems(tmp_path, had) == [
        "missing cluster.rkestate",
        "damaged kube_config_cluster.yml",
    ]
    assert files_problems(tmp_path, set()) == ["damaged kube_config_cluster.yml"]


def test_a_kill_lands_only_on_a_live_process():
    ended = subprocess.Popen(["true"])
    ended.wait()
    running = subprocess.Popen(["sleep", "30"])
    try:
        assert kill([ended.pid, running.pid]) == [running.pid]
        assert running.wait(timeout=10) == -9
    finally:
        running.kill()


def test_a_race_where_both_fail_early_or_overlap_is_no_pass():
    early = [FlowRun(flow_id=uuid4(), state=Failed(message="policy denied")) for _ in range(2)]
    tally = Tally()
    assert not judge_race(("provision", "provision"), early, [], tally)
    assert (tally.trials, tally.no_rke, tally.bad_outcomes) == (1, 1, 2)

    both = [FlowRun(flow_id=uuid4(), state=Completed()) for _ in range(2)]
    calls = [
        {"event": "end", "run": str(both[0].id), "start": 0.0, "end": 2.0},
        {"event": "end", "run": str(both[1].id), "start": 1.0, "end": 3.0},
    ]
    tally = Tally()
    assert not judge_race(("provision", "provision"), both, calls, tally)
    assert tally.interleavings == 1 and tally.outcomes["provision: ran rke"] == 2


# -- a short R1 and R2 ------------------------------------------------------------------------


def test_r1_a_kill_of_rke_lands_never_loses_state_and_the_rerun_converges(env: Env, svc):
    """Kills of the flow-run process or the worker hold the cluster's lease ~75 s: those run
    in the benchmark only."""
    lab, tally, rng = lab_of(env, svc), Tally(), random.Random(1)
    calibrate(lab, ("provision",))  # creates the cluster
    for _ in range(3):  # rke may end before the instant drawn: that kill does not count
        r1_trial(lab, rng, tally, targets=("rke",), operations=("provision",))
        if tally.trials:
            break
    assert tally.trials == 1, f"kills landed {tally.trials}, missed {tally.missed}"
    assert tally.by_target == {"rke": 1} and tally.by_phase == {"rke": 1}
    assert tally.problems == []


def test_r2_two_runs_requested_at_once_never_interleave(env: Env, svc):
    lab, tally, rng = lab_of(env, svc), Tally(), random.Random(2)
    for _ in range(2):
        r2_race(lab, rng, tally)
    assert tally.trials == 2
    assert tally.problems == []
    assert sum(tally.outcomes.values()) == 4 and set(tally.outcomes) <= {
        f"{op}: {outcome}" for op in ("provision", "teardown") for outcome in ALLOWED
    }
    assert tally.outcomes["provision: ran rke"] >= 1  # the first race creates the cluster
