"""The lab Kubernetes API server, brought up by the lab rke under the lab supervisor, seen
through the official `kubernetes` client as project code sees a real cluster."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from lab.kube.supervisor import ENV
from lab.nodes import LabNodes
from tests.lab.conftest import Rke

FIRST_ADDRESS = 150  # nodes on 127.0.0.150-152; the API on 127.0.0.150:6443


def wait_for(check, timeout: float = 10.0):
    """Poll `check` until it returns something truthy (controllers act asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, lab_supervisor):
    """One cluster brought up by `lab-rke up` with the supervisor's socket exported."""
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV, lab_supervisor.socket_path)
    tmp = tmp_path_factory.mktemp("kubeapi")
    with LabNodes(tmp / "nodes", 3, first_address=FIRST_ADDRESS) as nodes:
        (tmp / "work").mkdir()
        rke = Rke(tmp / "work", nodes)
        path = rke.config(roles=[["controlplane", "etcd"], ["worker"], ["worker"]])
        data = yaml.safe_load(path.read_text())
        data["nodes"][1]["labels"] = {"tier": "web"}
        data["nodes"][2]["taints"] = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
        path.write_text(yaml.safe_dump(data))
        run = rke.run("up", "--config", "cluster.yml")
        assert run.code == 0, run.tail
        try:
            yield rke
        finally:
            rke.run("remove", "--force", "--config", "cluster.yml")
            mp.undo()


@pytest.fixture(scope="module")
def admin(cluster) -> client.ApiClient:
    return config.new_client_from_config(str(cluster.workdir / "kube_config_cluster.yml"))


def api_client(host: str, ca: str, token: str | None = None, cert=None) -> client.ApiClient:
    conf = client.Configuration()
    conf.host = host
    conf.ssl_ca_cert = ca
    if token:
        conf.api_key = {"authorization": f"Bearer {token}"}
    if cert:
        conf.cert_file, conf.key_file = cert
    return client.ApiClient(conf)


def error_body(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_rke_finds_the_api_and_admin_kubeconfig_works(cluster, admin):
    run = cluster.run("up", "--config", "cluster.yml")
    assert run.code == 0, run.tail
    assert "is a control plane node with reachable Kubernetes API endpoint" in run.stdout
    version = client.VersionApi(admin).get_code()
    assert version.git_version == "v1.30.5"
    names = [n.metadata.name for n in client.CoreV1Api(admin).list_namespace().items]
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(names)
