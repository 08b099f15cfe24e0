"""rotate-certificates, snapshot-etcd and restore-etcd through a real Prefect server, real sshd
lab nodes, lab rke and the lab's Kubernetes API: ONE cluster for the module, provisioned once.

Refusals are checked first and must touch no node (sshd's accepted logins stay the same)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from pydantic import SecretStr
from typer.testing import CliRunner

from blocks import PolicyService as PolicyBlock
from cluster_mgmt.certificates import RotationInputError, check_services
from cluster_mgmt.snapshots import SNAPSHOT_NAME, read_snapshots
from deployments import cli
from deployments.bootstrap import deployment_specs, schedules
from flows.certificates import rotate_certificates
from flows.etcd import restore_etcd, snapshot_etcd
from lab.policy_service import PolicyService
from tests.flowenv import Env, failure_message

LAB_FIRST_ADDRESS = 200  # nodes 127.0.0.200-202; the cluster's API on 127.0.0.200:6443

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def env(tmp_path_factory, lab_nodes, lab_rke, lab_supervisor):
    """One READY one-node cluster for the whole module (provisioned once)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        env = Env(tmp_path_factory.mktemp("etcd"), lab_nodes, lab_rke, monkeypatch, lab_supervisor)
        state = env.provision(env.spec(count=1))
        assert state.is_completed(), failure_message(state)
        yield env


def blocks(env: Env) -> dict[str, str]:
    return env.blocks


def rotate(env: Env, **parameters):
    return rotate_certificates(
        environment="test", name=env.name, **parameters, **blocks(env), return_state=True
    )


def snapshot(env: Env, **parameters):
    return snapshot_etcd(environment="test", **parameters, **blocks(env), return_state=True)


def restore(env: Env, snapshot_name: str, **parameters):
    return restore_etcd(
        environment="test",
        name=env.name,
        snapshot_name=snapshot_name,
        **parameters,
        **blocks(env),
        return_state=True,
    )


def artifact_versions(env: Env) -> list:
    with get_client(sync_client=True) as prefect:
        return prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"cluster-test-{env.name}"]))
        )


def latest_artifact(env: Env) -> str:
    return max(artifact_versions(env), key=lambda a: a.created).data


def expiry_row(artifact: str, certificate: str) -> tuple[str, str]:
    """(expires before, expires after) of one certificate in the artifact's expiry table."""
    match = re.search(
        rf"^\| {re.escape(certificate)} \| ([^|]+) \| ([^|]+) \|$", artifact, re.MULTILINE
    )
    assert match, f"no expiry row for {certificate}"
    return match.group(1).strip(), match.group(2).strip()


def ca_pem(env: Env) -> str:
    state = json.loads(env.cluster.read_text("cluster.rkestate"))
    return state["currentState"]["certificatesBundle"]["kube-ca"]["certificatePEM"]


def api(kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config_dict(yaml.safe_load(kubeconfig))


# --- refusals: before any side effect ----------------------------------------------------------


def test_refusals_touch_no_node(env: Env):
    before_logins = env.logins()
    phase = env.cluster.read_status().phase

    for confirmation in (None, env.name):
        state = rotate(env, rotate_ca=True, confirm_rotate_ca=confirmation)
        message = failure_message(state)
        assert state.is_failed() and "without confirmation" in message
        assert "every kubeconfig" in message and "restart" in message
        assert f"confirm_rotate_ca to 'test/{env.name}'" in message

    state = rotate(env, services=["kube-apiserverx"])  # rke would silently ignore it
    message = failure_message(state)  # the parameter schema names rke's services
    assert state.is_failed() and "services.0" in message and "kube-controller-manager" in message
    state = rotate(env, services=["etcd"], rotate_ca=True, confirm_rotate_ca=f"test/{env.name}")
    assert state.is_failed() and "leave services empty" in failure_message(state)

    for bad in ("../etc/passwd", "a/b", "a..b", "snap.zip", "-x", "", "x" * 121):
        assert not SNAPSHOT_NAME.matches(bad), bad
    assert SNAPSHOT_NAME.matches("snapshot-20261128T101500Z") and SNAPSHOT_NAME.matches("a.b_c")
    for state in (snapshot(env, name=env.name, snapshot_name="a/b"), restore(env, "../x")):
        message = failure_message(state)
        assert state.is_failed() and "snapshot_name" in message and "is not valid" in message

    state = restore(env, "never-taken")
    assert state.is_failed() and "no recorded snapshot named never-taken" in failure_message(state)

    rkestate = env.cluster.path("cluster.rkestate")
    shutil.move(rkestate, rkestate.with_name("aside"))
    try:
        for state in (restore(env, "never-taken"), rotate(env)):
            message = failure_message(state)
            assert state.is_failed() and "recover-cluster-state" in message, message
            assert "cluster.rkestate is missing" in message
    finally:
        shutil.move(rkestate.with_name("aside"), rkestate)

    assert env.logins() == before_logins
    assert env.cluster.read_status().phase == phase  # a refusal keeps the phase


def test_a_policy_denial_touches_no_node(env: Env, tmp_path):
    token = "policy-token-" + env.tag * 3
    with PolicyService(tmp_path, token) as service:
        service.set_mode("deny")
        PolicyBlock(url=service.url, token=SecretStr(token), ca_bundle=service.ca_pem).save(
            f"deny-{env.tag}", overwrite=True
        )
        denied = {**blocks(env), "policy": f"deny-{env.tag}"}
        before = env.logins()
        for operation, state in (
            (
                "rotate-certificates",
                rotate_certificates("test", env.name, **denied, return_state=True),
            ),
            ("snapshot-etcd", snapshot_etcd("test", env.name, **denied, return_state=True)),
            ("restore-etcd", restore_etcd("test", env.name, "x", **denied, return_state=True)),
        ):
            assert state.is_failed() and "policy denied" in failure_message(state), operation
            assert list(env.cluster.history_dir.glob(f"*-{operation}-policy")), operation
        assert service.requests == 3
    assert env.logins() == before


def test_service_names_are_rke_s():
    assert check_services(["etcd", "kubelet", "etcd"]) == ["etcd", "kubelet"]
    with pytest.raises(RotationInputError, match="kube-proxy"):
        check_services(["kubeproxy"])  # cluster.yml's key, not rke cert rotate's name


# --- snapshots and restore ---------------------------------------------------------------------


def test_snapshot_then_restore_brings_etcd_back(env: Env):
    state = snapshot(env, name=env.name, snapshot_name="before-change")
    assert state.is_completed(), failure_message(state)
    (record,) = [r for r in read_snapshots(env.cluster) if r.name == "before-change"]
    assert record.etcd_nodes == [env.lab.nodes[0].address] and record.taken_at
    zipped = env.lab.nodes[0].root / "opt/rke/etcd-snapshots/before-change.zip"
    assert record.size_bytes == {env.lab.nodes[0].address: zipped.stat().st_size}
    assert (
        f"| before-change | {record.taken_at} | {zipped.stat().st_size:,} B |"
        in latest_artifact(env)
    )
    assert env.cluster.path("snapshots.json").stat().st_mode & 0o777 == 0o600

    again = snapshot(env, name=env.name, snapshot_name="before-change")
    assert again.is_failed() and "already has a snapshot" in failure_message(again)

    with api(env.cluster.read_text("kube_config_cluster.yml")) as admin:
        core = client.CoreV1Api(admin)
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "after-snapshot"}, "data": {"k": "v"}}
        )
    earlier = {a.id for a in artifact_versions(env)}
    state = restore(env, "before-change")
    assert state.is_completed(), failure_message(state)
    assert state.result()["phase"] == "READY"
    for operation in ("snapshot-etcd", "restore-etcd"):  # allowed decisions are kept too
        assert list(env.cluster.history_dir.glob(f"*-{operation}-policy")), operation
    versions = sorted(
        (a for a in artifact_versions(env) if a.id not in earlier), key=lambda a: a.created
    )
    phases = list(dict.fromkeys(a.metadata_["phase"] for a in versions))
    assert phases == ["UPDATING", "CONFIGURING", "READY"]
    with api(env.cluster.read_text("kube_config_cluster.yml")) as admin:
        with pytest.raises(ApiException) as gone:
            client.CoreV1Api(admin).read_namespaced_config_map("after-snapshot", "default")
        assert gone.value.status == 404
    with api(env.cluster.read_text("customer_kube_config.yml")) as customer:  # configured again
        client.CoreV1Api(customer).list_namespaced_config_map("customer")


def test_snapshot_of_an_environment_takes_every_ready_cluster(env: Env):
    idle = env.cluster.dir.parent / "idle"  # a cluster of the environment that is not READY
    idle.mkdir(mode=0o700)
    (idle / "status.json").write_text(
        json.dumps(
            {
                "phase": "FAILED",
                "operation": "provision",
                "flow_run_id": "x",
                "message": "m",
                "updated_at": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    try:
        state = snapshot(env)
        assert state.is_completed(), failure_message(state)
        result = state.result()
        assert result["clusters"] == [env.name]
        assert result["snapshot"].startswith("snapshot-")
        assert result["snapshot"] in [r.name for r in read_snapshots(env.cluster)]
        assert not (idle / "snapshots.json").exists()
    finally:
        shutil.rmtree(idle)


# --- certificates ------------------------------------------------------------------------------


def test_rotate_one_service_keeps_the_ca(env: Env):
    ca = ca_pem(env)
    state = rotate(env, services=["kube-apiserver"])
    assert state.is_completed(), failure_message(state)
    artifact = latest_artifact(env)
    before, after = expiry_row(artifact, "kube-apiserver")
    assert before != after and after > before
    assert expiry_row(artifact, "kube-ca")[0] == expiry_row(artifact, "kube-ca")[1]
    assert ca_pem(env) == ca


def test_rotate_ca_reissues_the_customer_kubeconfig(env: Env):
    old_customer = env.cluster.read_text("customer_kube_config.yml")
    ca = ca_pem(env)
    state = rotate(env, rotate_ca=True, confirm_rotate_ca=f"test/{env.name}")
    assert state.is_completed(), failure_message(state)
    assert ca_pem(env) != ca
    before, after = expiry_row(latest_artifact(env), "kube-ca")
    assert before != after
    customer = env.cluster.read_text("customer_kube_config.yml")
    assert customer != old_customer
    assert Secret.load(f"kubeconfig-test-{env.name}").get() == customer
    with api(customer) as works:
        client.CoreV1Api(works).list_namespaced_config_map("customer")
    with api(old_customer) as stale, pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client.CoreV1Api(stale).list_namespaced_config_map("customer", _request_timeout=5)


# --- CLI and deployments -----------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch) -> list:
    """The runs the CLI would start (deployment, parameters), instead of starting them."""
    runs: list = []
    monkeypatch.setattr(cli, "start_run", lambda d, p, wait: runs.append((d, p)))
    return runs


@pytest.mark.parametrize(
    "args",
    [
        ["rotate-certificates", "prod", "web", "--rotate-ca"],
        ["rotate-certificates", "prod", "web", "--rotate-ca", "--confirm", "prod/other"],
        ["rotate-certificates", "prod", "web", "--service", "kubeproxy"],
        ["snapshot", "prod", "--snapshot-name", "a/b"],
        ["restore", "prod", "web", "--snapshot-name", "../x"],
    ],
)
def test_cli_refuses_bad_input_before_starting_a_run(started, args):
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert started == []


def test_cli_starts_the_deployments(started):
    runner = CliRunner()
    for args in (
        ["rotate-certificates", "prod", "web", "--service", "etcd"],
        ["rotate-certificates", "prod", "web", "--rotate-ca", "--confirm", "prod/web"],
        ["snapshot", "prod"],
        ["snapshot", "prod", "web", "--snapshot-name", "pre-upgrade"],
        ["restore", "prod", "web", "--snapshot-name", "pre-upgrade", "--unrecorded"],
    ):
        assert runner.invoke(cli.app, args).exit_code == 0, args
    assert started == [
        (
            "rotate-certificates/default",
            {"environment": "prod", "name": "web", "services": ["etcd"]},
        ),
        (
            "rotate-certificates/default",
            {
                "environment": "prod",
                "name": "web",
                "rotate_ca": True,
                "confirm_rotate_ca": "prod/web",
            },
        ),
        ("snapshot-etcd/default", {"environment": "prod"}),
        (
            "snapshot-etcd/default",
            {"environment": "prod", "name": "web", "snapshot_name": "pre-upgrade"},
        ),
        (
            "restore-etcd/default",
            {
                "environment": "prod",
                "name": "web",
                "snapshot_name": "pre-upgrade",
                "require_recorded": False,
            },
        ),
    ]


def test_a_schedule_per_environment_as_documented():
    """The commented example in prefect.yaml, uncommented, gives one schedule per environment."""
    text = (Path(__file__).parent.parent / "deployments/prefect.yaml").read_text()
    example = text.split("# schedules:\n", 1)[1].split("    work_pool:", 1)[0]
    entries = yaml.safe_load(
        "\n".join(line.replace("#", "", 1)[1:] for line in example.splitlines())
    )
    (spec,) = [s for s in deployment_specs() if s["entrypoint"] == "flows.etcd.snapshot_etcd"]
    made = schedules({**spec, "schedules": entries})
    assert [s.parameters for s in made] == [{"environment": "prod"}, {"environment": "staging"}]
    assert [s.cron for s in made] == ["0 2 * * *", "0 3 * * *"]
