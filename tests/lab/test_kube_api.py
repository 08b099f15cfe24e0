"""The lab Kubernetes API server, brought up by the lab rke under the lab supervisor, seen
through the official `kubernetes` client as project code sees a real cluster."""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from lab.kube.supervisor import ENV
from lab.nodes import LabNodes
from lab.rke import pki
from tests.lab.conftest import Rke

FIRST_ADDRESS = 150  # nodes on 127.0.0.150-152; the API on 127.0.0.150:6443
INTERNAL_ADDRESS = "127.0.0.153"  # the control plane's internal_address (never listened on)
EXTRA_SAN_IP = "127.0.0.154"  # authentication.sans (never listened on)


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
        data["nodes"][0]["internal_address"] = INTERNAL_ADDRESS  # a name, never dialled
        data["nodes"][0]["hostname_override"] = "cp-one"
        data["authentication"] = {"sans": ["api.lab.example", EXTRA_SAN_IP]}
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


HOST = f"https://127.0.0.{FIRST_ADDRESS}:6443"


@pytest.fixture(scope="module")
def ca_file(cluster) -> str:
    kubeconfig = yaml.safe_load((cluster.workdir / "kube_config_cluster.yml").read_text())
    path = cluster.workdir / "ca.crt"
    path.write_bytes(
        base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    )
    return str(path)


def token_for(core: client.CoreV1Api, namespace: str, account: str, name: str) -> str:
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": name,
                "annotations": {"kubernetes.io/service-account.name": account},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    secret = wait_for(
        lambda: (s := core.read_namespaced_secret(name, namespace)).data and "token" in s.data and s
    )
    assert set(secret.data) == {"token", "ca.crt", "namespace"}
    assert base64.b64decode(secret.data["namespace"]).decode() == namespace
    return base64.b64decode(secret.data["token"]).decode()


def test_service_account_token_works_inside_its_binding_only_and_dies_with_its_secret(
    admin, ca_file
):
    core = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_service_account("team", {"metadata": {"name": "robot"}})
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        "team",
        {
            "metadata": {"name": "robot-edit"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "edit",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "team"}],
        },
    )
    time.sleep(0.3)  # no token Secret appears on its own (as since 1.24)
    assert [s.metadata.name for s in core.list_namespaced_secret("team").items] == []
    token = token_for(core, "team", "robot", "robot-token")
    robot = client.CoreV1Api(api_client(HOST, ca_file, token=token))
    robot.create_namespaced_config_map("team", {"metadata": {"name": "made-by-robot"}})
    assert [c.metadata.name for c in robot.list_namespaced_config_map("team").items] == [
        "kube-root-ca.crt",
        "made-by-robot",
    ]
    with pytest.raises(ApiException) as denied:
        robot.list_namespace()
    assert denied.value.status == 403
    assert error_body(denied.value)["message"] == (
        'namespaces is forbidden: User "system:serviceaccount:team:robot" cannot list resource '
        '"namespaces" in API group "" at the cluster scope'
    )
    assert error_body(denied.value)["reason"] == "Forbidden"
    with pytest.raises(ApiException) as other_ns:
        robot.list_namespaced_secret("kube-system")
    assert other_ns.value.status == 403
    core.delete_namespaced_secret("robot-token", "team")
    with pytest.raises(ApiException) as revoked:
        robot.list_namespaced_config_map("team")
    assert revoked.value.status == 401
    assert error_body(revoked.value)["reason"] == "Unauthorized"


def foreign_client_cert(tmp: Path) -> tuple[str, str]:
    """A kube-admin/system:masters certificate signed by some other CA."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name("kube-admin", "system:masters"))
        .issuer_name(name("other-ca"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp / "foreign.crt", tmp / "foreign.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return str(crt), str(pem)


def test_bad_token_and_foreign_certificate_get_401(ca_file, tmp_path):
    for api in (
        api_client(HOST, ca_file, token="not-a-token"),
        api_client(HOST, ca_file, cert=foreign_client_cert(tmp_path)),
        api_client(HOST, ca_file),
    ):
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(api).list_namespace()
        assert exc.value.status == 401
        assert error_body(exc.value) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }


def apply(api: client.ApiClient, obj: dict, manager: str, force: bool = False) -> dict:
    """Server-side apply of a ConfigMap in `default` (application/apply-patch+yaml)."""
    result = client.CoreV1Api(api).patch_namespaced_config_map(
        obj["metadata"]["name"],
        "default",
        obj,
        field_manager=manager,
        force=force,
        _content_type="application/apply-patch+yaml",
    )
    return api.sanitize_for_serialization(result)


def test_server_side_apply_creates_updates_conflicts_and_forces(admin):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}}
    created = apply(admin, cm, "alice")
    assert created["data"] == {"a": "1"}
    assert [(m["manager"], m["operation"]) for m in created["metadata"]["managedFields"]] == [
        ("alice", "Apply")
    ]
    assert created["metadata"]["managedFields"][0]["fieldsV1"] == {"f:data": {"f:a": {}}}
    updated = apply(admin, {**cm, "data": {"a": "2", "b": "x"}}, "alice")
    assert updated["data"] == {"a": "2", "b": "x"}
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    same_value = apply(admin, {**cm, "data": {"a": "2"}}, "bob")
    assert same_value["data"] == {"a": "2", "b": "x"}  # shared ownership, no conflict
    with pytest.raises(ApiException) as conflict:
        apply(admin, {**cm, "data": {"b": "y"}}, "bob")
    body = error_body(conflict.value)
    assert conflict.value.status == 409 and body["reason"] == "Conflict"
    assert (
        body["message"] == 'Apply failed with 1 conflict: conflict with "alice" using v1: .data.b'
    )
    assert body["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "alice" using v1',
            "field": ".data.b",
        }
    ]
    forced = apply(admin, {**cm, "data": {"b": "y"}}, "bob", force=True)
    assert forced["data"]["b"] == "y"
    owners = {m["manager"]: m["fieldsV1"] for m in forced["metadata"]["managedFields"]}
    assert owners["bob"] == {"f:data": {"f:b": {}}}
    assert owners["alice"] == {"f:data": {"f:a": {}}}
    dropped = apply(admin, {**cm, "data": {}}, "alice")  # alice stops managing a: it goes
    assert dropped.get("data", {}) == {"b": "y"}


def test_merge_patch(admin):
    core = client.CoreV1Api(admin)
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "mp"}, "data": {"k": "v", "gone": "x"}}
    )
    patched = core.patch_namespaced_config_map(
        "mp",
        "default",
        {"data": {"k": "new", "gone": None}, "metadata": {"labels": {"l": "1"}}},
        _content_type="application/merge-patch+json",
    )
    assert patched.data == {"k": "new"}
    assert patched.metadata.labels == {"l": "1"}


def test_error_bodies_404_409_422(admin):
    core = client.CoreV1Api(admin)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", "default")
    assert missing.value.status == 404
    assert error_body(missing.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'configmaps "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "configmaps"},
        "code": 404,
    }
    with pytest.raises(ApiException) as exists:
        core.create_namespace({"metadata": {"name": "default"}})
    assert exists.value.status == 409
    assert error_body(exists.value)["reason"] == "AlreadyExists"
    assert error_body(exists.value)["message"] == 'namespaces "default" already exists'
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "rv"}})
    cm.metadata.resource_version = str(int(cm.metadata.resource_version) - 1)
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("rv", "default", cm)
    assert stale.value.status == 409 and error_body(stale.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as bad:
        core.create_namespaced_config_map("default", {"metadata": {"name": "Bad_Name"}})
    body = error_body(bad.value)
    assert bad.value.status == 422 and body["reason"] == "Invalid"
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value'
    )
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as no_ns:
        core.create_namespaced_config_map("missing-ns", {"metadata": {"name": "x"}})
    assert no_ns.value.status == 404
    assert error_body(no_ns.value)["message"] == 'namespaces "missing-ns" not found'


def test_namespace_deletion_removes_its_content(admin):
    core = client.CoreV1Api(admin)
    apps = client.AppsV1Api(admin)
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_secret("doomed", {"metadata": {"name": "s"}, "string_data": {"a": "b"}})
    apps.create_namespaced_deployment(
        "doomed",
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        },
    )
    assert wait_for(lambda: core.list_namespaced_pod("doomed").items)
    deleted = core.delete_namespace("doomed")
    assert deleted is not None

    def gone() -> bool:
        try:
            core.read_namespace("doomed")
            return False
        except ApiException as exc:
            return exc.status == 404

    assert wait_for(gone)
    assert core.list_pod_for_all_namespaces(field_selector="metadata.namespace=doomed").items == []
    assert [
        s for s in core.list_secret_for_all_namespaces().items if s.metadata.namespace == "doomed"
    ] == []


def readyz_any(admin: client.ApiClient) -> tuple[int, str]:
    """GET /readyz?verbose with the admin credentials: status and text."""
    status, _, text = get_raw(admin, "/readyz?verbose")
    return status, text


def test_readyz_verbose(admin):
    status, text = readyz_any(admin)
    assert status == 200
    lines = text.splitlines()
    assert lines[0] == "[+]ping ok" and "[+]etcd ok" in lines
    assert lines[-1] == "readyz check passed"


def test_rke_left_nodes_and_kube_system_pods(admin, cluster):
    core = client.CoreV1Api(admin)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    addresses = ["cp-one"] + [f"127.0.0.{FIRST_ADDRESS + i}" for i in (1, 2)]
    assert sorted(nodes) == sorted(addresses)
    first, second, third = (nodes[a] for a in addresses)
    assert first.metadata.labels["node-role.kubernetes.io/controlplane"] == "true"
    assert first.metadata.labels["node-role.kubernetes.io/etcd"] == "true"
    assert second.metadata.labels["node-role.kubernetes.io/worker"] == "true"
    assert second.metadata.labels["tier"] == "web"
    assert [(t.key, t.value, t.effect) for t in third.spec.taints] == [
        ("dedicated", "db", "NoSchedule")
    ]
    for node in nodes.values():
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready[0].status == "True"
        assert node.status.node_info.kubelet_version == "v1.30.5"
    pods = wait_for(
        lambda: (
            len(core.list_namespaced_pod("kube-system").items) >= 6
            and core.list_namespaced_pod("kube-system").items
        )
    )
    names = [p.metadata.name for p in pods]
    for prefix in ("canal-", "coredns-", "metrics-server-"):
        assert any(n.startswith(prefix) for n in names), names
    assert all(p.status.phase == "Running" for p in pods)
    assert wait_for(lambda: core.list_namespaced_pod("ingress-nginx").items)


def test_full_cluster_state_in_cluster_and_get_state_file_recovers_it(admin, cluster):
    secret = client.CoreV1Api(admin).read_namespaced_secret("full-cluster-state", "kube-system")
    stored = json.loads(base64.b64decode(secret.data["full-cluster-state"]))
    state_path = cluster.workdir / "cluster.rkestate"
    local = json.loads(state_path.read_text())
    ca = "kube-ca"
    assert (
        stored["currentState"]["certificatesBundle"][ca]["certificatePEM"]
        == local["currentState"]["certificatesBundle"][ca]["certificatePEM"]
    )
    state_path.unlink()
    run = cluster.run("util", "get-state-file", "--config", "cluster.yml")
    assert run.code == 0, run.tail
    assert "Successfully connected to server using kubeconfig" in run.stdout
    recovered = json.loads(state_path.read_text())
    assert (
        recovered["currentState"]["certificatesBundle"][ca]["certificatePEM"]
        == local["currentState"]["certificatesBundle"][ca]["certificatePEM"]
    )


def test_faults_through_the_control_channel(admin, lab_supervisor, ca_file):
    address = f"127.0.0.{FIRST_ADDRESS}"
    core = client.CoreV1Api(admin)
    lab_supervisor.call("node", address=address, name=f"127.0.0.{FIRST_ADDRESS + 1}", ready=False)
    node = core.read_node(f"127.0.0.{FIRST_ADDRESS + 1}")
    assert [c.status for c in node.status.conditions if c.type == "Ready"] == ["Unknown"]
    lab_supervisor.call("node", address=address, name=f"127.0.0.{FIRST_ADDRESS + 1}", ready=True)

    lab_supervisor.call("etcd", address=address, healthy=False)
    status, text = readyz_any(admin)
    assert status == 500
    assert "[-]etcd failed: reason withheld" in text.splitlines()
    assert text.splitlines()[-1] == "readyz check failed"
    lab_supervisor.call("etcd", address=address, healthy=True)
    assert readyz_any(admin)[0] == 200

    pod = next(
        p
        for p in core.list_namespaced_pod("kube-system").items
        if p.metadata.name.startswith("coredns-")
    )
    lab_supervisor.call(
        "pod", address=address, namespace="kube-system", name=pod.metadata.name, crashloop=True
    )
    crashing = core.read_namespaced_pod(pod.metadata.name, "kube-system")
    assert crashing.status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
    assert crashing.status.container_statuses[0].restart_count > 0
    lab_supervisor.call(
        "pod", address=address, namespace="kube-system", name=pod.metadata.name, crashloop=False
    )

    not_after = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)).replace(
        microsecond=0
    )
    lab_supervisor.call("certificate", address=address, not_after=not_after.isoformat())
    assert served_certificate(ca_file, address).not_valid_after_utc == not_after
    lab_supervisor.call("certificate", address=address, not_after=None)

    lab_supervisor.call("api", address=address, mode="hang")
    with socket.create_connection((address, 6443), timeout=5) as raw:
        raw.settimeout(0.5)
        raw.sendall(b"\x16\x03\x01\x00\x05hello")  # accepted, never answered
        with pytest.raises(TimeoutError):
            raw.recv(1)
    lab_supervisor.call("api", address=address, mode="down")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 6443), timeout=5).close()
    lab_supervisor.call("api", address=address, mode="up")
    assert client.VersionApi(admin).get_code().git_version == "v1.30.5"


ADDRESS = f"127.0.0.{FIRST_ADDRESS}"


def served_certificate(ca_file: str, server_hostname: str) -> x509.Certificate:
    """The certificate the API serves, verified against kube-ca for `server_hostname`."""
    context = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection((ADDRESS, 6443), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_serving_certificate_carries_the_alt_names_rke_gives_it(cluster, ca_file):
    # rke's pki.GetAltNames: every control plane's address, internal address and hostname
    # override, authentication.sans, 127.0.0.1, the first service-cluster IP, then the
    # kubernetes service names
    for name in ("kubernetes.default.svc.cluster.local", "localhost", ADDRESS, "cp-one"):
        cert = served_certificate(ca_file, name)  # hostname verification passes
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = alt.get_values_for_type(x509.DNSName)
    ips = [str(i) for i in alt.get_values_for_type(x509.IPAddress)]
    assert sorted(dns) == sorted(
        [
            "cp-one",
            "api.lab.example",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
    )
    assert sorted(ips) == sorted(
        [ADDRESS, INTERNAL_ADDRESS, EXTRA_SAN_IP, "127.0.0.1", "10.43.0.1"]
    )
    control_plane = SimpleNamespace(
        address=ADDRESS, node={"internal_address": INTERNAL_ADDRESS, "hostname_override": "cp-one"}
    )
    expected = pki.alt_names(
        [control_plane], "cluster.local", ["10.43.0.1"], ["api.lab.example", EXTRA_SAN_IP]
    )
    assert (dns, ips) == expected
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kube-apiserver"


def get_raw(admin: client.ApiClient, path: str) -> tuple[int, str, str]:
    """GET `path` with the admin credentials: status, content type and text."""
    response = admin.rest_client.pool_manager.request("GET", f"{HOST}{path}")
    return response.status, response.headers["Content-Type"], response.data.decode()


def test_discovery_and_livez_bodies_are_kube_apiservers(admin):
    status, ctype, text = get_raw(admin, "/api")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(text) == {
        "kind": "APIVersions",
        "versions": ["v1"],
        # kube-apiserver's --advertise-address, which rke sets to the internal address
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{INTERNAL_ADDRESS}:6443"}
        ],
    }
    groups = json.loads(get_raw(admin, "/apis")[2])
    assert (groups["kind"], groups["apiVersion"]) == ("APIGroupList", "v1")
    names = [g["name"] for g in groups["groups"]]
    assert names == ["apps", "batch", "networking.k8s.io", "rbac.authorization.k8s.io"]
    apps_v1 = {"groupVersion": "apps/v1", "version": "v1"}
    assert groups["groups"][0] == {
        "name": "apps",
        "versions": [apps_v1],
        "preferredVersion": apps_v1,
    }
    assert json.loads(get_raw(admin, "/apis/apps")[2]) == {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": "apps",
        "versions": [apps_v1],
        "preferredVersion": apps_v1,
    }
    assert get_raw(admin, "/livez") == (200, "text/plain; charset=utf-8", "ok")
    assert get_raw(admin, "/livez/ping") == (200, "text/plain; charset=utf-8", "ok")
    status, _, text = get_raw(admin, "/livez?verbose")
    lines = text.splitlines()
    assert status == 200 and lines[:3] == ["[+]ping ok", "[+]log ok", "[+]etcd ok"]
    assert lines[-1] == "livez check passed"
    assert all(line.startswith("[+]") and line.endswith(" ok") for line in lines[:-1])
    # readiness-only checks are not liveness checks
    for check in ("etcd-readiness", "informer-sync", "shutdown"):
        assert f"[+]{check} ok" not in lines
    assert get_raw(admin, "/livez/etcd-readiness")[0] == 404


def test_watch_is_not_served_and_discovery_says_so(admin):
    with pytest.raises(ApiException) as core_watch:
        client.CoreV1Api(admin).list_namespaced_config_map("default", watch=True)
    assert core_watch.value.status == 405
    assert error_body(core_watch.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'watch is not supported on resources of kind "configmaps"',
        "reason": "MethodNotAllowed",
        "details": {"kind": "configmaps"},
        "code": 405,
    }
    with pytest.raises(ApiException) as apps_watch:
        client.AppsV1Api(admin).list_deployment_for_all_namespaces(watch=True)
    body = error_body(apps_watch.value)
    assert body["message"] == 'watch is not supported on resources of kind "deployments.apps"'
    assert body["details"] == {"group": "apps", "kind": "deployments"}
    for path in ("/api/v1", "/apis/apps/v1", "/apis/rbac.authorization.k8s.io/v1"):
        for resource in json.loads(get_raw(admin, path)[2])["resources"]:
            assert "watch" not in resource["verbs"], resource["name"]


def test_objects_get_uid_and_creation_time_and_a_new_resource_version_on_update(admin):
    core = client.CoreV1Api(admin)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    made = core.create_namespaced_config_map("default", {"metadata": {"name": "ids"}})
    other = core.create_namespaced_config_map("default", {"metadata": {"name": "ids-2"}})
    assert uuid.UUID(made.metadata.uid).version == 4 and made.metadata.uid != other.metadata.uid
    assert before <= made.metadata.creation_timestamp <= datetime.datetime.now(datetime.UTC)
    made.data = {"k": "v"}
    replaced = core.replace_namespaced_config_map("ids", "default", made)
    patched = core.patch_namespaced_config_map("ids", "default", {"data": {"k": "w"}})
    versions = [int(o.metadata.resource_version) for o in (made, replaced, patched)]
    assert versions == sorted(set(versions))  # each write a new, higher resourceVersion
    for obj in (replaced, patched, core.read_namespaced_config_map("ids", "default")):
        assert obj.metadata.uid == made.metadata.uid
        assert obj.metadata.creation_timestamp == made.metadata.creation_timestamp
    unchanged = core.read_namespaced_config_map("ids", "default")
    assert unchanged.metadata.resource_version == patched.metadata.resource_version


def test_a_binding_to_view_reads_but_cannot_write(admin, ca_file):
    core = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": "viewers"}})
    core.create_namespaced_service_account("viewers", {"metadata": {"name": "reader"}})
    core.create_namespaced_config_map("viewers", {"metadata": {"name": "shown"}})
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        "viewers",
        {
            "metadata": {"name": "reader-view"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "viewers"}],
        },
    )
    reader = client.CoreV1Api(
        api_client(HOST, ca_file, token=token_for(core, "viewers", "reader", "reader-token"))
    )
    assert "shown" in [c.metadata.name for c in reader.list_namespaced_config_map("viewers").items]
    assert reader.read_namespaced_config_map("shown", "viewers").metadata.name == "shown"
    reader.list_namespaced_pod("viewers")
    with pytest.raises(ApiException) as write:
        reader.create_namespaced_config_map("viewers", {"metadata": {"name": "not-mine"}})
    assert write.value.status == 403
    assert error_body(write.value)["message"] == (
        'configmaps is forbidden: User "system:serviceaccount:viewers:reader" cannot create '
        'resource "configmaps" in API group "" in the namespace "viewers"'
    )
    for denied in (
        lambda: reader.delete_namespaced_config_map("shown", "viewers"),
        lambda: reader.patch_namespaced_config_map("shown", "viewers", {"data": {"a": "b"}}),
        lambda: reader.list_namespaced_secret("viewers"),  # view does not read Secrets
        lambda: reader.list_namespaced_config_map("default"),  # nor other namespaces
    ):
        with pytest.raises(ApiException) as exc:
            denied()
        assert exc.value.status == 403 and error_body(exc.value)["reason"] == "Forbidden"
    assert core.read_namespaced_config_map("shown", "viewers").data is None  # nothing written


SELECTOR = {"matchLabels": {"app": "crud"}}
POD_TEMPLATE = {
    "metadata": {"labels": {"app": "crud"}},
    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
}
RULES = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]


@pytest.mark.parametrize(
    ("api_version", "kind", "namespace", "body"),
    [
        ("v1", "Service", "default", {"spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}}),
        ("rbac.authorization.k8s.io/v1", "Role", "default", {"rules": RULES}),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", None, {"rules": RULES}),
        (
            "apps/v1",
            "DaemonSet",
            "default",
            {"spec": {"selector": SELECTOR, "template": POD_TEMPLATE}},
        ),
    ],
)
def test_crud_through_the_dynamic_client(admin, tmp_path, api_version, kind, namespace, body):
    """Create, read, list, replace, merge-patch and delete, found through discovery as the
    `kubernetes` dynamic client finds any kind."""
    resources = DynamicClient(admin, cache_file=str(tmp_path / "discovery.json")).resources
    api = resources.get(api_version=api_version, kind=kind)
    name = f"crud-{kind.lower()}"
    where = {"namespace": namespace} if namespace else {}
    manifest = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **body}
    created = api.create(body=manifest, **where).to_dict()
    assert (created["kind"], created["metadata"]["name"]) == (kind, name)
    assert api.get(name=name, **where).metadata.uid == created["metadata"]["uid"]
    assert name in [i.metadata.name for i in api.get(**where).items]
    for _ in range(5):  # as client-go's RetryOnConflict: a controller may write status meanwhile
        current = api.get(name=name, **where).to_dict()
        current["metadata"]["labels"] = {"step": "replaced"}
        try:
            replaced = api.replace(body=current, **where).to_dict()
            break
        except ConflictError:
            continue
    else:
        pytest.fail(f"{kind} {name}: replace conflicted 5 times in a row")
    assert replaced["metadata"]["labels"] == {"step": "replaced"}
    patched = api.patch(
        name=name,
        body={"metadata": {"annotations": {"step": "patched"}}},
        content_type="application/merge-patch+json",
        **where,
    ).to_dict()
    assert patched["metadata"]["annotations"] == {"step": "patched"}
    assert patched["metadata"]["labels"] == {"step": "replaced"}
    api.delete(name=name, **where)
    with pytest.raises(NotFoundError):
        api.get(name=name, **where)


def test_api_objects_live_in_etcd_snapshots(cluster, admin):
    """The server's data is etcd's: a snapshot restore brings back what was there then."""
    core = client.CoreV1Api(admin)
    core.create_namespaced_config_map("default", {"metadata": {"name": "before-snapshot"}})
    run = cluster.run("etcd", "snapshot-save", "--name", "snap1", "--config", "cluster.yml")
    assert run.code == 0, run.tail
    core.create_namespaced_config_map("default", {"metadata": {"name": "after-snapshot"}})
    run = cluster.run("etcd", "snapshot-restore", "--name", "snap1", "--config", "cluster.yml")
    assert run.code == 0, run.tail
    names = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
    assert "before-snapshot" in names and "after-snapshot" not in names
    version = cluster.run("version", "--config", "cluster.yml")
    assert version.code == 0 and 'GitVersion:"v1.30.5"' in version.stdout, version.tail


def test_rke_remove_stops_the_api_server(cluster):
    run = cluster.run("remove", "--force", "--config", "cluster.yml")
    assert run.code == 0, run.tail
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((f"127.0.0.{FIRST_ADDRESS}", 6443), timeout=5).close()
