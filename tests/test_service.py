"""The service as Prefect users run it: shared token, bootstrap, deployments, worker, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
import yaml

from lab.kube.supervisor import ENV
from tests.conftest import AUTH_STRING
from tests.processes import kill_tree

LAB_FIRST_ADDRESS = 30
CLI = str(Path(sys.executable).parent / "cluster-mgmt")
WEBSOCKETS = ["/events/in", "/events/out", "/logs/out"]


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# --- shared token ----------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, ("ops", "wrong")])
def test_rest_refuses_missing_or_wrong_token(prefect_server, auth):
    response = httpx.post(f"{prefect_server.api_url}/flows/filter", json={}, auth=auth)
    assert response.status_code == 401
    assert httpx.get(f"{prefect_server.api_url}/health").status_code == 200  # probes stay open
    ok = httpx.post(
        f"{prefect_server.api_url}/flows/filter", json={}, auth=tuple(AUTH_STRING.split(":", 1))
    )
    assert ok.status_code == 200


async def _websocket_outcome(url: str, token: str | None, subprotocol: bool) -> str:
    try:
        async with websockets.connect(url, subprotocols=["prefect"] if subprotocol else None) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            reply = await asyncio.wait_for(ws.recv(), timeout=5)
            return json.loads(reply)["type"]
    except websockets.exceptions.ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else None}"
    except websockets.exceptions.InvalidStatus as exc:
        return f"http {exc.response.status_code}"


@pytest.mark.parametrize("path", WEBSOCKETS)
def test_websockets_refuse_missing_or_wrong_token(prefect_server, path):
    url = prefect_server.api_url.replace("http://", "ws://") + path
    outcomes = [
        asyncio.run(_websocket_outcome(url, AUTH_STRING, subprotocol=False)),
        asyncio.run(_websocket_outcome(url, None, subprotocol=True)),
        asyncio.run(_websocket_outcome(url, "ops:wrong", subprotocol=True)),
    ]
    assert all(o != "auth_success" for o in outcomes), outcomes
    assert outcomes[1] == outcomes[2] == "closed 1008"
    assert asyncio.run(_websocket_outcome(url, AUTH_STRING, subprotocol=True)) == "auth_success"


def test_cli_reports_a_wrong_token_and_a_down_server(prefect_server):
    wrong = cli("list", env={"PREFECT_API_AUTH_STRING": "ops:wrong"})
    assert wrong.returncode == 3 and "refused the credentials" in wrong.stderr
    assert "ops:wrong" not in wrong.stderr + wrong.stdout
    down = cli("list", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert down.returncode == 3 and "cannot reach the Prefect API" in down.stderr


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """An API that answers every request with `status`, or never answers (`status` 0)."""

    status = 0
    released = threading.Event()

    def do_GET(self) -> None:
        if not self.status:
            self.released.wait(30)
            return
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html><body>the load balancer says no</body></html>")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (403, "refused access (403 Forbidden)"),
        (502, "answered 502 Bad Gateway"),
        (0, "did not answer in time (ReadTimeout"),
    ],
)
def test_cli_reports_api_trouble_in_one_line_with_exit_code_3(status, says):
    handler = type("Handler", (Misbehaving,), {"status": status, "released": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "PREFECT_API_URL": f"http://127.0.0.1:{server.server_port}/api",
        "PREFECT_API_REQUEST_TIMEOUT": "1",
        "PREFECT_CLIENT_MAX_RETRIES": "0",
    }
    try:
        for args in (["list"], ["status", "svc", "web"], ["delete", "svc", "web"]):
            result = cli(*args, env=env, timeout=60)
            assert result.returncode == 3, result.stderr
            assert result.stderr.startswith("error: ") and says in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        handler.released.set()
        server.shutdown()
        server.server_close()


# --- bootstrap, deployments, worker, CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def service(prefect_server, lab_nodes, lab_rke, lab_supervisor, tmp_path_factory):
    """Bootstrap into a fresh pool and run a real process worker on it."""
    from lab.embedded import EmbeddedWorker

    home = tmp_path_factory.mktemp("service")
    key = home / "id_node"
    key.write_text(lab_nodes.client_private_key)
    known = home / "known_hosts"
    known.write_text(lab_nodes.known_hosts())
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    args = [
        "bootstrap",
        "--pool",
        pool,
        "--state-root",
        str(home / "state"),
        "--init-volume",
        "--ssh-user",
        lab_nodes.user,
        "--ssh-key-file",
        str(key),
        "--known-hosts-file",
        str(known),
        "--rke-binary",
        lab_rke,
    ]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    faults = home / "faults.json"
    worker = EmbeddedWorker(
        home=home / "worker",
        api_url=prefect_server.api_url,
        auth_string=AUTH_STRING,
        pool=pool,
        extra_env={"LAB_RKE_FAULTS": str(faults), ENV: lab_supervisor.socket_path},
    )
    with worker:
        yield {"home": home, "args": args, "first": first, "worker": worker, "faults": faults}


def test_bootstrap_refuses_bad_values_in_one_line(service):
    result = cli(*service["args"], "--host-key-policy", "trust-everyone")
    assert result.returncode == 2 and "--host-key-policy" in result.stderr
    assert "Traceback" not in result.stderr


def test_bootstrap_is_idempotent_and_never_prints_the_key(service, lab_nodes):
    assert "created  work pool" in service["first"].stdout
    second = cli(*service["args"])
    assert second.returncode == 0 and "created" not in second.stdout
    key_line = lab_nodes.client_private_key.splitlines()[1]
    assert key_line not in service["first"].stdout + service["first"].stderr + second.stdout


def test_create_is_asynchronous_and_wait_follows_the_run(service, lab_nodes):
    spec = {
        "environment": "svc",
        "name": f"c{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"address": n.address, "port": n.port, "roles": r}
            for n, r in zip(
                lab_nodes.nodes, [["controlplane", "etcd"], ["worker"], ["worker"]], strict=True
            )
        ],
    }
    spec_file = service["home"] / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    waited = cli("create", "--spec", str(spec_file), "--wait", timeout=240)
    assert waited.returncode == 0, waited.stderr + waited.stdout
    assert waited.stdout.splitlines()[-1].startswith("Completed: READY")
    status = cli("status", "svc", spec["name"])
    assert status.returncode == 0 and "READY" in status.stdout and "status.json" in status.stdout
    assert cli("status", "svc", "../../etc").returncode == 4
    listed = cli("list", "--environment", "svc")
    assert spec["name"] in listed.stdout

    deleted = cli("delete", "svc", spec["name"], "--wait", timeout=240)
    assert deleted.returncode == 0, deleted.stderr + deleted.stdout
    assert "DELETED" in deleted.stdout
    assert spec["name"] not in cli("list", "--environment", "svc").stdout
    listed_all = cli("list", "--environment", "svc", "--all").stdout
    assert f"svc-{spec['name']}" in listed_all and "DELETED" in listed_all


@contextlib.contextmanager
def paused_pool(deployment: str):
    """No worker gets runs of `deployment` while paused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        pool = client.read_deployment_by_name(deployment).work_pool_name
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        try:
            yield client
        finally:
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))


def test_create_returns_as_soon_as_the_run_exists(service, lab_nodes):
    spec_file = _spec_file(service, lab_nodes, f"a{uuid.uuid4().hex[:6]}")
    with paused_pool("provision-cluster/default") as client:
        created = cli("create", "--spec", str(spec_file), timeout=60)  # a wait would hang
        assert created.returncode == 0, created.stderr
        run_id = re.search(r"flow run ([0-9a-f-]{36}) ", created.stdout).group(1)
        try:
            assert client.read_flow_run(uuid.UUID(run_id)).state.type.value == "SCHEDULED"
        finally:
            client.delete_flow_run(uuid.UUID(run_id))
    assert f"/v2/runs/flow-run/{run_id}" in created.stdout


def test_bad_input_is_refused_before_anything_starts(service, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    result = cli("create", "--spec", str(broken))
    assert result.returncode == 2 and "does not parse" in result.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(yaml.safe_dump({"name": "web", "hosts": ["10.0.0.1", "10.0.0.1"]}))
    result = cli("create", "--spec", str(invalid))
    assert result.returncode == 2 and "appears twice" in result.stderr
    unknown = cli("delete", "svc", "no-such-cluster")
    assert unknown.returncode == 4 and "unknown cluster" in unknown.stderr


def test_failed_run_gives_exit_code_1(service, lab_nodes):
    spec_file = service["home"] / "bad-version.yaml"
    nodes = [
        {
            "address": lab_nodes.nodes[0].address,
            "port": lab_nodes.nodes[0].port,
            "roles": ["controlplane", "etcd", "worker"],
        }
    ]
    spec_file.write_text(
        yaml.safe_dump(
            {
                "environment": "svc",
                "name": "old",
                "nodes": nodes,
                "kubernetes_version": "v1.18.3-rancher1-1",
            }
        )
    )
    result = cli("create", "--spec", str(spec_file), "--wait", timeout=240)
    assert result.returncode == 1
    assert "v1.18.3-rancher1-1" in result.stdout + result.stderr


def _spec_file(service, lab_nodes, name: str) -> Path:
    roles = [["controlplane", "etcd"], ["worker"], ["worker"]]
    nodes = [
        {"address": n.address, "port": n.port, "roles": r}
        for n, r in zip(lab_nodes.nodes, roles, strict=True)
    ]
    path = service["home"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"environment": "svc", "name": name, "nodes": nodes}))
    return path


def test_worker_killed_mid_run_leaves_state_whole_and_a_rerun_converges(service, lab_nodes):
    from cluster_mgmt.state import StateVolume

    name = f"k{uuid.uuid4().hex[:6]}"
    cluster = StateVolume(service["home"] / "state").cluster("svc", name)
    spec_file = _spec_file(service, lab_nodes, name)
    service["faults"].write_text(json.dumps({"slow_state_write": 2, "pause_at": "worker"}))
    try:
        assert cli("create", "--spec", str(spec_file)).returncode == 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = cluster.read_status()
            if (
                status
                and status.message == "running rke up"
                and list(cluster.dir.glob(".staging-*/cluster.rkestate"))
            ):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the run never reached rke up")
        time.sleep(1)  # inside rke's slow state write
        kill_tree(service["worker"].process.pid)  # as if the machine died mid-run
    finally:
        service["faults"].write_text("{}")
        service["worker"].process.wait(timeout=10)
        service["worker"].start()
    for file in ("cluster.rkestate", "kube_config_cluster.yml", "cluster.yml"):
        text = cluster.read_text(file)
        if text is not None:
            (json.loads if file.endswith("rkestate") else yaml.safe_load)(text)
    assert cluster.read_status().phase in ("PROVISIONING", "FAILED")
    rerun = cli("create", "--spec", str(spec_file), "--wait", timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert cluster.read_status().phase == "READY"
    assert not list(cluster.dir.glob(".staging-*"))


def test_the_token_is_in_no_process_title(service):
    titles = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            titles.append(cmdline.read_bytes().decode(errors="replace"))
    assert any("prefect\0server\0start" in title for title in titles)
    assert not any(AUTH_STRING in title for title in titles)


def test_kubeconfig_prints_the_customer_secret_block(service):
    from prefect.blocks.system import Secret

    Secret(value="apiVersion: v1\nkind: Config\n").save("kubeconfig-svc-kc", overwrite=True)
    found = cli("kubeconfig", "svc", "kc")
    assert found.returncode == 0 and "kind: Config" in found.stdout
    missing = cli("kubeconfig", "svc", "nothing-here")
    assert missing.returncode == 4 and "no customer kubeconfig" in missing.stderr


def test_a_damaged_status_json_is_one_line_and_exit_code_5(service):
    from blocks import ClusterStateVolume

    cluster = ClusterStateVolume.load("default").volume().cluster("svc", "damaged")
    cluster.dir.mkdir(parents=True, exist_ok=True)
    (cluster.dir / "status.json").write_text('{"phase": "READY", "mess')
    result = cli("status", "svc", "damaged")
    assert result.returncode == 5, result.stderr
    assert "status.json is not a valid status record" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# --- the embedded server: secrets at rest, the UI, process hygiene -----------------------------


def test_bootstrap_pins_the_volume_and_a_flow_refuses_another(service, lab_nodes, tmp_path):
    from blocks import ClusterStateVolume
    from cluster_mgmt.spec import ClusterSpec
    from cluster_mgmt.state import StateVolume
    from cluster_mgmt.volume_marker import read_marker
    from flows.provision import provision_cluster

    pinned = read_marker(service["home"] / "state").volume_id
    assert ClusterStateVolume.load("default").volume_id == pinned  # the block it created
    block = ClusterStateVolume.load("default")
    block.volume_id = None  # a block made before the volume was initialised
    block.save("default", overwrite=True)
    again = cli(*service["args"])
    assert again.returncode == 0, again.stderr
    assert f"created  volume id {pinned} in block cluster-state-volume/default" in again.stdout
    assert ClusterStateVolume.load("default").volume_id == pinned

    other = tmp_path / "other"  # another initialised volume where the pinned one should be
    found = StateVolume(other).initialise().volume_id
    moved = f"moved-{uuid.uuid4().hex[:6]}"
    ClusterStateVolume(root=str(other), volume_id=pinned).save(moved)
    spec = yaml.safe_load(_spec_file(service, lab_nodes, "pinned").read_text())
    before = [n.accepted_logins() for n in lab_nodes.nodes]
    state = provision_cluster(spec=ClusterSpec(**spec), state_volume=moved, return_state=True)
    assert state.is_failed()
    with pytest.raises(
        Exception, match=f"is volume {found}, but the cluster-state-volume block expects {pinned}"
    ):
        state.result()
    assert sorted(os.listdir(other)) == ["cluster-mgmt-volume.json"]
    assert [n.accepted_logins() for n in lab_nodes.nodes] == before
