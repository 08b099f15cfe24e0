"""The rke task: checkpoints that fail never stall rke; what it wrote is kept or reported."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from cluster_mgmt.driver import RkeDriver
from cluster_mgmt.state import StateError, StateVolume
from tasks.rke import run_rke
from tests.pki import cert_pem, key_pem

pytestmark = pytest.mark.usefixtures("prefect_server")

CONFIG = "nodes:\n- address: 127.0.0.1\n  user: rke\n  role: [controlplane, etcd, worker]\n"
RKESTATE = json.dumps(
    {"desiredState": {"certificatesBundle": {"kube-ca": {"certificatePEM": cert_pem()}}}}
)


def rke_that_breaks_status(tmp_path: Path, *, repair: bool) -> tuple[str, Path]:
    """An rke that writes its state, corrupts status.json (so the checkpoint fails), announces
    the write, then writes far more than a pipe holds; `repair` restores status.json first."""
    done = tmp_path / "rke-finished"
    script = tmp_path / "rke"
    body = f"""
        import pathlib, sys
        status = pathlib.Path('..', 'status.json')
        good = status.read_bytes()
        pathlib.Path('cluster.rkestate').write_text({RKESTATE!r})
        status.write_text('{{"phase": "PROV')
        print('level=info msg="Successfully Deployed state file at [./cluster.rkestate]"', flush=True)
        for n in range(100):
            print(f'level=info msg="line {{n}} {{"x" * 1000}}"')
        if {repair!r}:
            status.write_bytes(good)
        print('level=info msg="Finished building Kubernetes cluster successfully"')
        pathlib.Path({str(done)!r}).write_text('done')
    """
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script), done


def run_up(tmp_path: Path, binary: str):
    volume = StateVolume(tmp_path / "state")
    volume.initialise()
    cluster = volume.cluster("test", "checkpoint")
    cluster.create()
    # the timeout only bounds the test should rke stall; it is not what is checked
    driver = RkeDriver(binary=binary, timeout_seconds=60)

    @flow(name="rke-task-test")
    def up() -> object:
        with cluster.lock("provision", "test-run"):
            cluster.write_status("PROVISIONING", "provision", "test-run", "running rke up")
            return run_rke(cluster, "up", CONFIG, key_pem("node-ssh"), driver)

    return cluster, up


def test_a_failing_checkpoint_is_retried_when_rke_ends(tmp_path: Path):
    binary, done = rke_that_breaks_status(tmp_path, repair=True)
    cluster, up = run_up(tmp_path, binary)
    state = up(return_state=True)
    outcome = state.result()
    assert done.exists() and outcome.result.exit_code == 0 and outcome.result.ok
    assert "status.json is not a valid status record" in outcome.checkpoint_error
    assert "keeping rke's files during the run failed" in outcome.summary
    assert "cluster.rkestate" in outcome.promoted  # kept at the end
    assert cluster.read_text("cluster.rkestate") == RKESTATE
    assert not list(cluster.dir.glob(".staging-*"))
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    assert any(
        "keeping what rke wrote failed" in log.message and "retried when rke ends" in log.message
        for log in logs
    )


def test_a_checkpoint_that_keeps_failing_fails_the_run_and_keeps_staging(tmp_path: Path):
    binary, done = rke_that_breaks_status(tmp_path, repair=False)
    cluster, up = run_up(tmp_path, binary)
    with pytest.raises(StateError) as failure:
        up()
    message = str(failure.value)
    assert done.exists()  # rke ran to its end although nothing could be kept meanwhile
    assert message.startswith("rke up succeeded (exit code 0), but keeping what it wrote")
    assert "it failed during the run too: StateError" in message
    assert "status.json is not a valid status record" in message
    (stage,) = cluster.dir.glob(".staging-*-up")  # kept for the next operation
    assert str(stage) in message
    assert (stage / "cluster.rkestate").read_text() == RKESTATE
    assert cluster.read_text("cluster.rkestate") is None
