"""The lab's `rke` stand-in against docs/rke.md, run as a subprocess against real lab nodes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import warnings

import yaml
from cryptography import x509

from tests.lab.conftest import RKE

LINE = re.compile(
    r'^time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)" '
    r'level=(trace|debug|info|warning|error|fatal)( msg=("(?:[^"\\]|\\.)*"|[A-Za-z0-9\-._/@^+]+))?$'
)


def messages(run, level: str | None = None) -> list[str]:
    out = []
    for line in run.lines:
        match = LINE.match(line)
        assert match, f"not a logrus line: {line!r}"
        if level is None or match.group(2) == level:
            text = match.group(4) or ""
            out.append(json.loads(text) if text.startswith('"') else text)
    return out


def bundle(path, which: str = "currentState") -> dict:
    return json.loads(path.read_text())[which]["certificatesBundle"]


def mode(path) -> int:
    return path.stat().st_mode & 0o777


# --- command line -------------------------------------------------------------------------------
def test_version_flags_and_unknown_command(rke):
    for flag in ("--version", "-v"):
        run = rke.run(flag)
        assert (run.code, run.stdout, run.stderr) == (0, "rke version v1.6.3\n", "")
    run = rke.run("frobnicate")
    assert run.code == 3
    assert run.stderr == "No help topic for 'frobnicate'\n"
    assert run.stdout == ""


def test_flag_errors_help_and_quiet(rke):
    run = rke.run("up", "--bogus")
    assert run.code == 1
    assert run.lines[0] == "Incorrect Usage: flag provided but not defined: -bogus"
    assert "--ignore-docker-version" in run.stdout and "--update-only" in run.stdout
    assert messages_tail(run) == ("fatal", "flag provided but not defined: -bogus")
    run = rke.run("--bogus", "up")
    assert (
        run.code == 1 and run.lines[0] == "Incorrect Usage. flag provided but not defined: -bogus"
    )
    help_text = rke.run("--help").stdout
    assert "COMMANDS:" in help_text and "--quiet, -q" in help_text
    # global flags only before the subcommand; -q discards everything, FATA included
    assert rke.run("up", "-q").code == 1
    quiet = rke.run("-q", "up", "--config", "missing.yml")
    assert (quiet.code, quiet.stdout, quiet.stderr) == (1, "", "")
    loud = rke.run("up", "--config", "missing.yml")
    assert loud.lines[0].endswith('level=info msg="Running RKE version: v1.6.3"')
    assert messages(loud, "fatal") == [
        (
            "Failed to resolve cluster file: can not find cluster configuration file: open "
            f"{rke.workdir}/missing.yml: no such file or directory"
        )
    ]


def messages_tail(run) -> tuple[str, str]:
    match = LINE.match(run.lines[-1])
    text = match.group(4) or ""
    return match.group(2), json.loads(text) if text.startswith('"') else text


def test_list_versions_and_cluster_version(rke):
    assert rke.run("config", "--list-version").stdout == "v1.30.5-rancher1-1\n"
    listed = rke.run("config", "-l", "-a").stdout.split()
    assert sorted(listed) == [
        "v1.27.16-rancher1-1",
        "v1.28.14-rancher1-1",
        "v1.29.9-rancher1-1",
        "v1.30.5-rancher1-1",
    ]
    run = rke.run("version")  # no kubeconfig, no API server: rke's error
    assert run.code == 1
    assert messages(run, "fatal") == [
        (
            "[state] Failed to create Kubernetes Client: stat ./kube_config_cluster.yml: no such "
            "file or directory"
        )
    ]


# --- validation (no node is contacted) ---------------------------------------------------------
def test_validation_texts_and_order(rke):
    def fatal(**extra) -> str:
        rke.config(**extra)
        run = rke.run("up")
        assert run.code == 1 and not (rke.workdir / "cluster.rkestate").exists()
        return messages(run, "fatal")[0]

    n = rke.nodes.nodes
    assert fatal(roles=[["etcd", "master"]]) == (
        f"Failed to classify hosts from config file: Failed to recognize host [{n[0].address}] "
        "role master"
    )
    rke.config()
    text = (rke.workdir / "cluster.yml").read_text().replace(n[1].address, n[0].address)
    (rke.workdir / "cluster.yml").write_text(text)
    run = rke.run("up")
    assert messages(run, "fatal") == [
        f"Failed to validate cluster: Cluster can't have duplicate node: {n[0].address}"
    ]
    assert fatal(kubernetes_version="v1.31.1-rancher1-1") == (
        "Failed to validate cluster: v1.31.1-rancher1-1 is an unsupported Kubernetes version and "
        "system images are not populated: etcd image is not populated"
    )
    assert fatal(kubernetes_version="v1.30.5-rancher1-1", network={"plugin": "weave"}) == (
        "Failed to validate cluster: weave CNI support is removed for k8s version >=1.30.0"
    )
    assert fatal(network={"plugin": "cilium"}) == (
        "Failed to validate cluster: Network plugin [cilium] is not supported"
    )
    (rke.workdir / "cluster.yml").write_text("nodes:\n- address: a\n  role: etcd\n")
    run = rke.run("up")
    assert messages(run, "fatal") == [
        (
            "Failed to parse cluster file: yaml: unmarshal errors:\n  line 3: cannot unmarshal !!str "
            "`etcd` into []string"
        )
    ]
    assert '\\n  line 3: cannot unmarshal !!str `etcd` into []string"' in run.lines[-1]


# --- up -----------------------------------------------------------------------------------------
def test_up_files_ca_reuse_and_new_ca(rke):
    n = rke.nodes.nodes
    # an even etcd count and a name without .yml: both fine for rke
    rke.config(
        "envs/prod.conf",
        roles=[["controlplane", "etcd"], ["etcd"], ["worker"]],
        not_a_real_key="ignored like yaml.v2 does",
    )
    run = rke.run("up", "--config", "envs/prod.conf")
    assert run.code == 0, run.tail
    assert run.stderr == ""
    info = messages(run, "info")
    assert info[0] == "Running RKE version: v1.6.3"
    assert info[1] == "Initiating Kubernetes cluster"
    assert "Building Kubernetes cluster" in info
    assert "Successfully Deployed state file at [envs/prod.rkestate]" in info
    assert "Successfully Deployed local admin kubeconfig at [envs/kube_config_prod.conf]" in info
    assert info[-1] == "Finished building Kubernetes cluster successfully"
    state_file = rke.workdir / "envs/prod.rkestate"
    kube_file = rke.workdir / "envs/kube_config_prod.conf"
    assert mode(state_file) == mode(kube_file) == 0o600
    state = json.loads(state_file.read_text())
    config = state["currentState"]["rkeConfig"]
    assert config["kubernetesVersion"] == "v1.30.5-rancher1-1"
    assert config["nodes"][0]["hostnameOverride"] == n[0].address
    assert config["nodes"][0]["port"] == str(n[0].port)
    assert "not_a_real_key" not in json.dumps(config) and "notARealKey" not in json.dumps(config)
    certs = state["currentState"]["certificatesBundle"]
    etcd_names = {f"kube-etcd-{h.address.replace('.', '-')}" for h in n[:2]}
    assert {
        "kube-ca",
        "kube-admin",
        "kube-apiserver",
        "kube-node",
        "kube-proxy",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-apiserver-proxy-client",
        "kube-apiserver-requestheader-ca",
        "kube-service-account-token",
        *etcd_names,
    } == set(certs)
    assert certs["kube-node"]["commonName"] == "system:node"
    assert certs["kube-apiserver"]["path"] == "/etc/kubernetes/ssl/kube-apiserver.pem"
    with warnings.catch_warnings():  # rke's CA has serial 0, as Go writes it
        warnings.simplefilter("ignore")
        ca = x509.load_pem_x509_certificate(certs["kube-ca"]["certificatePEM"].encode())
        assert ca.serial_number == 0
    api = x509.load_pem_x509_certificate(certs["kube-apiserver"]["certificatePEM"].encode())
    assert api.issuer == ca.subject
    kubeconfig = yaml.safe_load(kube_file.read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://{n[0].address}:6443"
    assert kubeconfig["contexts"][0]["name"] == "local"
    assert kubeconfig["users"][0]["name"] == "kube-admin-local"
    # the nodes got their certificates (the CA key only on the control plane)
    ssl0, ssl2 = (h.root / "etc/kubernetes/ssl" for h in (n[0], n[2]))
    assert (ssl0 / "kube-ca-key.pem").exists() and (ssl2 / "kube-ca.pem").exists()
    assert not (ssl2 / "kube-ca-key.pem").exists()
    assert (ssl0 / "kube-ca.pem").read_text().strip() == certs["kube-ca"]["certificatePEM"].strip()

    again = rke.run("up", "--config", "envs/prod.conf")
    assert again.code == 0, again.tail
    assert bundle(state_file)["kube-ca"] == certs["kube-ca"]

    # state and kubeconfig gone: rke mints a brand-new CA (the nodes keep the old certs)
    state_file.unlink()
    kube_file.unlink()
    fresh = rke.run("up", "--config", "envs/prod.conf")
    assert fresh.code == 0, fresh.tail
    assert bundle(state_file)["kube-ca"]["certificatePEM"] != certs["kube-ca"]["certificatePEM"]
    assert (ssl0 / "kube-ca.pem").read_text().strip() == certs["kube-ca"]["certificatePEM"].strip()


def test_docker_version_check_and_the_flag_that_overrides_the_file(rke):
    rke.nodes.nodes[2].docker_version = "28.0.1"
    rke.config(ignore_docker_version=True)  # ignored: the CLI flag always wins
    run = rke.run("up")
    assert run.code == 1
    assert messages(run, "fatal") == [
        (
            f"Unsupported Docker version found [28.0.1] on host [{rke.nodes.nodes[2].address}], "
            "supported versions are [1.13.x 17.03.x 17.06.x 17.09.x 18.06.x 18.09.x 19.03.x 20.10.x "
            "23.0.x 24.0.x 25.0.x 26.0.x 26.1.x 27.0.x 27.1.x 27.2.x]"
        )
    ]
    assert "desiredState" in json.loads((rke.workdir / "cluster.rkestate").read_text())
    run = rke.run("up", "--ignore-docker-version")
    assert run.code == 0, run.tail


def test_unreachable_worker_is_skipped_and_the_run_fails(rke):
    worker = rke.nodes.nodes[2]
    rke.config()
    assert rke.run("up").code == 0
    worker.stop()
    run = rke.run("up")
    assert run.code == 1
    warnings = messages(run, "warning")
    assert (
        f"Failed to set up SSH tunneling for host [{worker.address}]: Can't retrieve Docker Info: "
        'error during connect: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/info": Failed to dial '
        f"ssh using address [{worker.address}:{worker.port}]: dial tcp "
        f"{worker.address}:{worker.port}: connect: connection refused"
    ) in warnings
    assert f"Removing host [{worker.address}] from node lists" in warnings
    assert messages(run, "fatal") == [
        (
            f"Provisioning incomplete, host(s) [{worker.address}] skipped because they could not be "
            "contacted"
        )
    ]
    state = json.loads((rke.workdir / "cluster.rkestate").read_text())
    current = [x["address"] for x in state["currentState"]["rkeConfig"]["nodes"]]
    desired = [x["address"] for x in state["desiredState"]["rkeConfig"]["nodes"]]
    assert current == [h.address for h in rke.nodes.nodes[:2]]
    assert desired == [h.address for h in rke.nodes.nodes]


def test_unreachable_worker_of_a_new_cluster_is_dropped(rke):
    """rke's ClusterInit tunnels to a new cluster's nodes and builds the desired state from the
    node list TunnelHosts left: an unreachable node silently leaves the cluster (exit 0)."""
    worker = rke.nodes.nodes[2]
    worker.stop()
    rke.config()
    run = rke.run("up")
    assert run.code == 0, run.tail
    assert f"Removing host [{worker.address}] from node lists" in messages(run, "warning")
    state = json.loads((rke.workdir / "cluster.rkestate").read_text())
    assert worker.address not in json.dumps(state["desiredState"]["rkeConfig"]["nodes"])


def test_fail_at_and_addon_warning(rke):
    rke.config()
    run = rke.run("up", faults={"fail_at": "init"})
    assert run.code == 1 and not (rke.workdir / "cluster.rkestate").exists()
    run = rke.run("up", faults={"fail_at": "worker"})
    assert run.code == 1
    assert messages(run, "fatal")[0].startswith("[workerPlane] Failed to bring up Worker Plane: ")
    state = json.loads((rke.workdir / "cluster.rkestate").read_text())
    assert state["currentState"]["certificatesBundle"]["kube-ca"]  # written before the workers
    run = rke.run("up", faults={"addon_job_warning": True})
    assert run.code == 0
    assert messages(run, "warning") == [
        (
            "Failed to deploy addon execute job [rke-network-plugin]: Failed to get job complete "
            "status for job rke-network-plugin-deploy-job in namespace kube-system"
        )
    ]
    assert messages(run)[-1] == "Finished building Kubernetes cluster successfully"


def test_state_write_is_not_atomic(rke):
    rke.config()
    assert rke.run("up").code == 0
    state_file = rke.workdir / "cluster.rkestate"
    size = state_file.stat().st_size
    rke.faults.write_text(json.dumps({"slow_state_write": 3}))
    env = {**os.environ, "LAB_RKE_FAULTS": str(rke.faults)}
    proc = subprocess.Popen(
        [RKE, "up"], cwd=rke.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not 0 < state_file.stat().st_size < size:
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    torn = state_file.read_text()
    assert 0 < len(torn) < size
    try:
        json.loads(torn)
    except json.JSONDecodeError:
        pass
    else:
        raise AssertionError("a kill mid-write must leave the state file torn")


def test_remove_prompt_and_force(rke):
    rke.config()
    assert rke.run("up").code == 0
    files = [rke.workdir / "cluster.rkestate", rke.workdir / "kube_config_cluster.yml"]
    prompt = "Are you sure you want to remove Kubernetes cluster [y/n]: "
    run = rke.run("remove", stdin="n\n")
    assert run.code == 0 and prompt in run.stdout and all(f.exists() for f in files)
    run = rke.run("remove", stdin="")  # the prompt has no newline: FATA follows on its line
    assert run.code == 1 and run.lines[-1].startswith(prompt + 'time="')
    assert run.lines[-1].endswith(" level=fatal msg=EOF")
    assert all(f.exists() for f in files)
    run = rke.run("remove", "--force")
    assert run.code == 0, run.tail
    assert prompt not in run.stdout
    assert messages(run)[-1] == "Cluster removed successfully"
    assert not any(f.exists() for f in files)
    for node in rke.nodes.nodes:
        assert not list((node.root / "etc/kubernetes").iterdir())


def test_cert_rotate_needs_state(rke):
    rke.config()
    run = rke.run("cert", "rotate")
    assert run.code == 1
    assert messages(run, "fatal") == ["Failed to rotate certificates: can't find old certificates"]
    assert not (rke.workdir / "cluster.rkestate").exists()


def test_up_adds_and_removes_etcd_members_and_cleans_removed_nodes(rke):
    """ReconcileCluster on a changed cluster.yml: etcd members removed, then added; a removed
    node is deleted from Kubernetes unless it keeps another role, and its planes cleaned."""
    first, second, third = rke.nodes.nodes
    rke.config(roles=[["controlplane", "etcd"], ["worker"], ["etcd", "worker"]])
    assert rke.run("up").code == 0
    rke.config(roles=[["controlplane", "etcd"], ["etcd", "worker"]])  # the third node goes
    run = rke.run("up")
    assert run.code == 0, run.tail
    info = messages(run, "info")
    order = [
        "[reconcile] Check etcd hosts to be deleted",
        f"[remove/etcd] Removing member [etcd-{third.address}] from etcd cluster",
        f"[remove/etcd] Successfully removed member [etcd-{third.address}] from etcd cluster",
        f"[hosts] host [{third.address}] has another role, skipping delete from kubernetes cluster",
        f"[hosts] Host [{third.address}] is already a worker or control host, skipping cleanup certs.",
        "[reconcile] Check etcd hosts to be added",
        f"[add/etcd] Adding member [etcd-{second.address}] to etcd cluster",
        f"[add/etcd] Successfully Added member [etcd-{second.address}] to etcd cluster",
        f"[hosts] Cordoning host [{third.address}]",
        f"[hosts] Deleting host [{third.address}] from the cluster",
        "[reconcile] Reconciled cluster state successfully",
    ]
    positions = [info.index(line) for line in order]
    assert positions == sorted(positions)
    # cleaned twice: the etcd data when it left etcd, then the rest when it left the workers
    assert info.count(f"[hosts] Successfully cleaned up host [{third.address}]") == 2
    assert f"[hosts] Cordoning host [{first.address}]" not in info
    state = json.loads((rke.workdir / "cluster.rkestate").read_text())
    nodes = state["currentState"]["rkeConfig"]["nodes"]
    assert [n["address"] for n in nodes] == [first.address, second.address]
