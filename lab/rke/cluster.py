"""What rke's commands do (cmd/*.go, cluster/*.go), step by step, against the lab nodes.

The Kubernetes side of a cluster is modelled, not run: what rke would store through the API
(the Secret `kube-system/full-cluster-state`, nodes, addon ConfigMaps) is kept in the etcd data
directory of every etcd node (`/var/lib/etcd/lab-kube-store.json`), so it lives and dies with
etcd (snapshots carry it, `remove` wipes it). With a lab supervisor the same file holds the lab
API server's objects, and what rke writes to Kubernetes goes through that API (lab.rke.kubeapi).
A control plane host's API "answers" when a real
HTTPS server answers on `<address>:6443` with the admin kubeconfig, or, in the lab model, when
its `kube-apiserver` container is running. Calls that rke makes with client-go from the CLI
(`rke version`, `util get-state-file`, the legacy-cluster path) only use real HTTPS.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab.rke import config as cfg
from lab.rke import hosts, kube, kubeapi, pki, schema
from lab.rke import state as st
from lab.rke.errors import RkeError
from lab.rke.faults import faults
from lab.rke.hosts import Docker, Plan, Spec
from lab.rke.logrus import log

STORE_DIR = "/var/lib/rancher/etcd/"
STORE_FILE = "lab-kube-store.json"
TEMP_CERT_PATH = "/etc/kubernetes/.tmp/"
SNAPSHOT_PATH = "/opt/rke/etcd-snapshots/"


@dataclass
class Flags:
    config_path: str
    update_only: bool = False
    disable_port_check: bool = False
    agent_auth: bool = False
    cert_dir: str = ""
    custom_certs: bool = False
    use_local_state: bool = False


# --- helpers ----------------------------------------------------------------------------------
def err_list(errors: list[str]) -> str:
    """util.ErrList: `[e1 e2]`."""
    return "[" + " ".join(errors) + "]"


def parallel(items, fn) -> list[str]:
    """errgroup over hosts; returns the errors (as text) in item order."""
    items = list(items)
    if not items:
        return []
    errors: dict[int, str] = {}

    def work(pair) -> None:
        i, item = pair
        try:
            fn(item)
        except RkeError as exc:
            errors[i] = str(exc)

    with ThreadPoolExecutor(max_workers=min(len(items), 50)) as pool:
        list(pool.map(work, enumerate(items)))
    return [errors[i] for i in sorted(errors)]


def fail(step: str, message: str) -> None:
    if faults.checkpoint(step):
        raise RkeError(message)


def resolve_cluster_file(config_path: str, lower: bool = False) -> str:
    prefix = "failed to resolve cluster file" if lower else "Failed to resolve cluster file"
    full = os.path.abspath(config_path) if config_path else os.getcwd()
    try:
        with open(full) as fh:
            return fh.read()
    except IsADirectoryError:
        raise RkeError(f"{prefix}: failed to read file: read {full}: is a directory") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise RkeError(
            f"{prefix}: can not find cluster configuration file: open {full}: {reason}"
        ) from None


def parse_config(text: str, lower: bool = False) -> dict:
    prefix = "failed to parse cluster file" if lower else "Failed to parse cluster file"
    try:
        return schema.parse(text)
    except schema.YamlError as exc:
        raise RkeError(f"{prefix}: {exc}") from None


def set_options_from_cli(ctx, config: dict) -> dict:
    if ctx.bool("ssh-agent-auth"):
        config["ssh_agent_auth"] = True
    config["ignore_docker_version"] = ctx.bool("ignore-docker-version")
    if ctx.bool("s3"):
        etcd = config.setdefault("services", {}).setdefault("etcd", {})
        backup = etcd.get("backup_config") or {}
        s3 = {}
        for flag, key in (
            ("s3-endpoint", "endpoint"),
            ("bucket-name", "bucket_name"),
            ("region", "region"),
            ("access-key", "access_key"),
            ("secret-key", "secret_key"),
            ("folder", "folder"),
        ):
            if ctx.string(flag):
                s3[key] = ctx.string(flag)
        if ctx.string("s3-endpoint-ca"):
            try:
                with open(ctx.string("s3-endpoint-ca")) as fh:
                    s3["custom_ca"] = fh.read()
            except OSError as exc:
                log.warning(
                    f"Failed to read s3-endpoint-ca [{ctx.string('s3-endpoint-ca')}]: "
                    f"open {ctx.string('s3-endpoint-ca')}: {exc.strerror.lower()}"
                )
        backup["s3backupconfig"] = s3
        etcd["backup_config"] = backup
    return config


def agent_auth(cluster) -> bool:
    return bool(cluster.config.get("ssh_agent_auth"))


def tunnel(cluster) -> None:
    hosts.tunnel_hosts(cluster, agent_auth(cluster))


def encryption_enabled(config: dict) -> bool:
    enc = config.get("services", {}).get("kube-api", {}).get("secrets_encryption_config") or {}
    return bool(isinstance(enc, dict) and enc.get("enabled"))


def new_encryption_config() -> str:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    name = f"akey{int(time.time())}"
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "- providers:\n  - aescbc:\n      keys:\n"
        f"      - name: {name}\n        secret: {key}\n  - identity: {{}}\n  resources:\n"
        "  - secrets\n"
    )


# --- the lab's model of the cluster's Kubernetes data (in etcd's data dir) ---------------------
def store_read(cluster) -> dict | None:
    cached = getattr(cluster, "_store", None)
    if cached is not None:
        return cached
    for host in cluster.etcd_hosts:
        if host.conn is None:
            continue
        data = Docker(host).copy_from("etcd", STORE_DIR + STORE_FILE)
        if data is not None:
            try:
                cluster._store = json.loads(data)
                return cluster._store
            except json.JSONDecodeError:
                continue
    return None


def store_update(cluster, change, flush: bool = True) -> None:
    """Change the modelled Kubernetes data; `flush` writes it to every etcd host's data dir."""
    data = store_read(cluster) or {"secrets": {}, "configmaps": {}, "nodes": {}}
    cluster._store = data
    change(data)
    if not flush:
        return
    payload = json.dumps(data, indent=1).encode()

    def write(host) -> None:
        Docker(host).copy_to("etcd", STORE_DIR, {STORE_FILE: (payload, 0o600)})

    parallel([h for h in cluster.etcd_hosts if h.conn is not None], write)


def api_answers(cluster, host) -> bool:
    try:
        kube.server_version(cluster.kube_config_path)
        return True
    except kube.KubeError:
        pass
    if host.conn is None:
        return False
    result = host.conn.one("inspect", "--format", "{{json .}}", "kube-apiserver")
    return result.rc == 0 and json.loads(result.text)["State"]["Running"]


# --- kubeconfig (cluster.rebuildLocalAdminConfig) ---------------------------------------------
def rebuild_kubeconfig(cluster) -> None:
    if not cluster.control_hosts:
        return
    log.info("[reconcile] Rebuilding and updating local kube config")
    admin = cluster.certificates.get(pki.KUBE_ADMIN)
    ca_pem = cluster.certificates.get(pki.CA, {}).get("certificatePEM", "")
    working = ""
    found = False
    for host in cluster.control_hosts:
        url = f"https://{host.address}:6443"
        if not admin or not admin.get("certificatePEM"):
            log.debug("[reconcile] Rebuilding and updating local kube config, creating new address")
            new = _kubeconfig_with_new_address(cluster.kube_config_path, url, cluster.cluster_name)
        else:
            log.debug(
                "[reconcile] Rebuilding and updating local kube config, creating new kubeconfig"
            )
            new = pki.kubeconfig_data(
                url,
                cluster.cluster_name,
                pki.KUBE_ADMIN,
                ca_pem,
                admin["certificatePEM"],
                admin["keyPEM"],
            )
        st.deploy_admin_config(new, cluster.kube_config_path)
        working = new
        if api_answers(cluster, host):
            log.info(
                f"[reconcile] host [{host.address}] is a control plane node with reachable "
                "Kubernetes API endpoint in the cluster"
            )
            found = True
            break
        log.warning(
            f"[reconcile] host [{host.address}] is a control plane node without reachable "
            "Kubernetes API endpoint in the cluster"
        )
    if not found:
        log.warning(
            "[reconcile] no control plane node with reachable Kubernetes API endpoint in the "
            "cluster found"
        )
    entry = (
        dict(admin)
        if admin
        else {k: "" for k in ("certificatePEM", "keyPEM", "name", "commonName", "ouName")}
    )
    entry["config"] = working
    cluster.certificates[pki.KUBE_ADMIN] = entry


def _kubeconfig_with_new_address(path: str, url: str, cluster_name: str) -> str:
    try:
        config = kube.load(path)
    except kube.KubeError:
        return ""
    if config["token"]:
        return ""
    return pki.kubeconfig_data(
        url,
        cluster_name,
        pki.KUBE_ADMIN,
        config["ca"].decode(),
        config["cert"].decode(),
        config["key"].decode(),
    )


# --- node-side reads of the legacy paths ------------------------------------------------------
def fetch_file(host, path: str, container: str, plane: str, image: str) -> str:
    """pki.FetchFileFromHost: run a helper container with /etc/kubernetes and read a file."""
    plan = Plan(host)
    plan.info(f"Finding container [{container}] on host [{host.address}], try #1")
    plan.run(
        plane, [Spec(container, image, binds=["/etc/kubernetes:/etc/kubernetes"], privileged=True)]
    )
    index = plan.copy_from(container, path)
    data = plan.execute().file(index)
    if data is None:
        raise RkeError(
            f"Failed to copy file [{path}] from container [{container}] on host [{host.address}]: "
            f"Error: No such container:path: {container}:{path}"
        )
    return data.decode()


def state_from_nodes(cluster) -> bool:
    """cluster.GetStateFromNodes (the rke 0.1.x cluster-state.yml)."""
    content = ""
    image = cluster.images.get("alpine", "")
    for host in cluster.all_hosts:
        if host.conn is None:
            continue
        try:
            content = fetch_file(
                host, TEMP_CERT_PATH + "cluster-state.yml", "cluster-state-deployer", "state", image
            )
            break
        except RkeError:
            continue
    if not content:
        return False
    log.info("[state] Successfully fetched cluster state from Nodes")
    return True


def certs_from_nodes(cluster) -> dict:
    """cluster.GetClusterCertsFromNodes (reads /etc/kubernetes/.tmp/, as rke 0.1.x kept them)."""
    log.info("[certificates] Fetching kubernetes certificates from nodes")
    image = cluster.images.get("alpine", "")
    optional = {pki.REQUEST_HEADER_CA, pki.API_PROXY_CLIENT, pki.KUBE_ADMIN}
    names = [
        pki.CA,
        pki.KUBE_API,
        pki.KUBE_CONTROLLER,
        pki.KUBE_SCHEDULER,
        pki.KUBE_PROXY,
        pki.KUBE_NODE,
        pki.KUBE_ADMIN,
        pki.REQUEST_HEADER_CA,
        pki.API_PROXY_CLIENT,
    ]
    names += [pki.crt_name_for_host(h, pki.ETCD) for h in cluster.etcd_hosts]
    random.shuffle(names)  # Go map iteration order
    last = "Certificate not found"
    for host in cfg.unique_hosts(cluster.etcd_hosts, cluster.control_hosts):
        if host.conn is None:
            continue
        try:
            bundle = pki.Bundle()
            for name in names:
                path = f"{TEMP_CERT_PATH}{name}.pem"
                try:
                    content = fetch_file(host, path, "cert-fetcher", "certificates", image)
                except RkeError:
                    if name.startswith(pki.ETCD) or name in optional:
                        continue
                    raise RkeError(f"Certificate {path} is not found") from None
                cert = pki.load_cert(content)
                key = pki.load_key(content)
                if cert is None or key is None:
                    raise RkeError("tls: failed to find any PEM data in key input")
                cn = "system:node" if name == pki.KUBE_NODE else name
                ou = {pki.KUBE_NODE: "system:nodes", pki.KUBE_ADMIN: "system:masters"}.get(name, "")
                bundle.set(
                    name, cn if name in (pki.KUBE_NODE, pki.KUBE_ADMIN) else "", ou, cert, key
                )
            Docker(host).remove(["cert-fetcher"])
            return bundle.entries
        except RkeError as exc:
            last = str(exc)
    raise RkeError(last)


def state_from_kubernetes(cluster) -> None:
    """cluster.GetStateFromKubernetes: the legacy `cluster-state` ConfigMap, 30 s timeout."""
    log.info("[state] Fetching cluster state from Kubernetes")
    deadline = time.monotonic() + faults.k8s_timeout_seconds
    try:
        config = kube.load(cluster.kube_config_path)
    except kube.KubeError as exc:
        raise RkeError(f"[state] Failed to create Kubernetes Client: {exc}") from None
    while time.monotonic() < deadline:
        try:
            status, _ = kube.request(
                config, "GET", "/api/v1/namespaces/kube-system/configmaps/cluster-state"
            )
            if status == 200:
                log.info(
                    "[state] Successfully Fetched cluster state to Kubernetes ConfigMap: cluster-state"
                )
                return
        except kube.KubeError:
            pass
        time.sleep(max(0.0, min(5.0, deadline - time.monotonic())))
    log.info("Timed out waiting for kubernetes cluster to get state")
    raise RkeError("[state] Timeout waiting for kubernetes cluster to get state")


def certs_from_kubernetes(cluster) -> dict:
    log.info("[certificates] Getting Cluster certificates from Kubernetes")
    try:
        kube.get_secret(cluster.kube_config_path, pki.CA)
    except kube.KubeError as exc:
        raise RkeError(str(exc)) from None
    raise RkeError(f'secrets "{pki.CA}" not found')


# --- ClusterInit (cmd/common.go) ----------------------------------------------------------------
def check_legacy_cluster(cluster, full: dict, flags: Flags) -> None:
    if os.path.exists(cluster.state_file_path):
        log.debug("[state] previous state found, this is not a legacy cluster")
        return
    log.debug("[state] previous state not found, possible legacy cluster")
    if not os.path.exists(cluster.kube_config_path):
        tunnel(cluster)
        if state_from_nodes(cluster):
            raise RkeError(
                "This is a legacy cluster with no kube config, aborting upgrade. Please re-run "
                "rke up with rke 0.1.x to retrieve correct state"
            )
        return
    log.info("[state] Possible legacy cluster detected, trying to upgrade")
    rebuild_kubeconfig(cluster)
    try:
        state_from_kubernetes(cluster)
    except RkeError as exc:
        log.warning(f"Failed to fetch state from kubernetes: {exc}")
        tunnel(cluster)
        log.info("[state] Fetching cluster state from Nodes")
        state_from_nodes(cluster)
    try:
        certs = certs_from_kubernetes(cluster)
    except RkeError as exc:
        log.warning(f"Failed to fetch certs from kubernetes: {exc}")
        try:
            certs = certs_from_nodes(cluster)
        except RkeError as exc2:
            raise RkeError(
                f"Failed to fetch cluster certs from nodes, aborting upgrade: {exc2}"
            ) from None
    full["currentState"]["rkeConfig"] = schema.to_json(cluster.config)
    full["currentState"]["certificatesBundle"] = certs
    full["desiredState"]["certificatesBundle"] = certs
    st.write_state(cluster.state_file_path, full)


def rebuild_state(cluster, old: dict, flags: Flags) -> dict:
    """cluster.RebuildState."""
    new = {"desiredState": {"rkeConfig": schema.to_json(cluster.config)}}
    if flags.custom_certs:
        new["desiredState"]["certificatesBundle"] = read_cert_dir(cluster, flags)
        new["currentState"] = old.get("currentState", {})
        return new
    bundle = old.get("desiredState", {}).get("certificatesBundle")
    generator = pki.Generator(pki.Bundle(bundle), cluster, log)
    if bundle is None:
        generator.admin_config_path = "cluster.yml"
        generator.fresh()
        if encryption_enabled(cluster.config):
            new["desiredState"]["encryptionConfig"] = new_encryption_config()
    else:
        generator.admin_config_path = flags.config_path
        generator.existing()
        if encryption_enabled(cluster.config):
            new["desiredState"]["encryptionConfig"] = (
                old["desiredState"].get("encryptionConfig") or new_encryption_config()
            )
    new["desiredState"]["certificatesBundle"] = generator.bundle.entries
    new["currentState"] = old.get("currentState", {})
    return new


def read_cert_dir(cluster, flags: Flags) -> dict:
    folder = flags.cert_dir or cfg.cert_dir_path(flags.config_path)
    bundle = pki.Bundle()
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".pem") and not name.endswith(("-key.pem", "-csr.pem")):
                base = name[: -len(".pem")]
                with open(os.path.join(folder, name)) as fh:
                    cert = pki.load_cert(fh.read())
                key = None
                key_path = os.path.join(folder, base + "-key.pem")
                if os.path.exists(key_path):
                    with open(key_path) as fh:
                        key = pki.load_key(fh.read())
                cn = "system:node" if base == pki.KUBE_NODE else base
                ou = {pki.KUBE_NODE: "system:nodes", pki.KUBE_ADMIN: "system:masters"}.get(base, "")
                bundle.set(base, cn, ou, cert, key)
    if not bundle.has_cert(pki.CA):
        raise RkeError(
            f"[state] Failed to validates certificates from dir [{folder}]: Failed to find master "
            "CA certificate"
        )
    return bundle.entries


def rotate_certificates(cluster, flags: Flags, full: dict) -> dict:
    """cmd/cert.go rotateRKECertificates."""
    log.info("Rotating Kubernetes cluster certificates")
    current_config = full.get("currentState", {}).get("rkeConfig")
    if not current_config:
        raise RkeError("Failed to rotate certificates: can't find old certificates")
    current = cfg.init_cluster_object(schema.from_json(current_config), flags.config_path)
    rotate = cluster.config.get("rotate_certificates") or {}
    bundle_entries = copy.deepcopy(full["currentState"].get("certificatesBundle") or {})
    if not rotate.get("cacertificates"):
        if pki.CA not in bundle_entries:
            raise RkeError("Failed to rotate certificates: can't find CA certificate")
        ca = pki.load_cert(bundle_entries[pki.CA].get("certificatePEM", ""))
        if ca is None:
            raise RkeError("Failed to rotate certificates: CA certificate is nil")
        if ca.not_valid_after_utc.timestamp() < time.time():
            raise RkeError(
                "Failed to rotate certificates: CA certificate is invalid, please use the "
                "--rotate-ca flag to rotate CA certificate, error: x509: certificate has expired "
                "or is not yet valid"
            )
    generator = pki.Generator(pki.Bundle(bundle_entries), current, log)
    generator.admin_config_path = flags.config_path
    generator.rotate(list(rotate.get("services") or []), bool(rotate.get("cacertificates")))
    full["desiredState"]["certificatesBundle"] = generator.bundle.entries
    full["desiredState"]["rkeConfig"] = schema.to_json(cluster.config)
    return full


def cluster_init(config: dict, flags: Flags) -> None:
    log.info("Initiating Kubernetes cluster")
    path = cfg.state_file_path(flags.config_path)
    full, _ = st.read_state(path)
    cluster = cfg.init_cluster_object(config, flags.config_path)
    try:
        try:
            check_legacy_cluster(cluster, full, flags)
        except RkeError as exc:
            if "aborting upgrade" in str(exc):
                raise
            log.warning(f"[state] can't fetch legacy cluster state from Kubernetes: {exc}")
    finally:
        hosts.close_all(cluster)
    fail("init", f"[state] Failed to write state file: open {path}: no space left on device")
    if cluster.config.get("rotate_certificates") is not None:
        full = rotate_certificates(cluster, flags, full)
    else:
        full = rebuild_state(cluster, full, flags)
    st.write_state(path, full)


# --- ClusterUp (cmd/up.go) ----------------------------------------------------------------------
def load_state(flags: Flags) -> dict:
    full, error = st.read_state(cfg.state_file_path(flags.config_path))
    if error:
        raise RkeError(error)
    return full


def state_cluster(full: dict, which: str, flags: Flags):
    """GetClusterState / InitClusterObject on a state's rkeConfig (None when absent)."""
    rke_config = full.get(which, {}).get("rkeConfig")
    if not rke_config:
        return None
    cluster = cfg.init_cluster_object(schema.from_json(rke_config), flags.config_path)
    cluster.certificates = copy.deepcopy(full[which].get("certificatesBundle") or {})
    return cluster


def cluster_up(flags: Flags, restore: bool = False) -> None:
    full = load_state(flags)
    desired = full.get("desiredState", {}).get("rkeConfig")
    if not desired:
        raise RkeError("Failed to validate cluster: v is not valid semver")
    cluster = cfg.init_cluster_object(schema.from_json(desired), flags.config_path)
    if cluster.config.get("rotate_certificates") is not None:
        rebuild_with_rotated_certificates(flags)
        return
    log.info("Building Kubernetes cluster")
    try:
        _cluster_up(cluster, full, flags, restore)
    finally:
        hosts.close_all(cluster)


def _cluster_up(cluster, full: dict, flags: Flags, restore: bool) -> None:
    if faults.checkpoint("ssh"):
        for host in cluster.etcd_hosts:
            log.warning(
                f"Failed to set up SSH tunneling for host [{host.address}]: Can't retrieve Docker "
                f"Info: error during connect: {hosts.DOCKER_INFO_URL}: Unable to access node with "
                f"address [{host.address}:{host.port}] using SSH. Please check if the node is up "
                "and is accepting SSH connections or check network policies and firewall rules. "
                f"Error: dial tcp {host.address}:{host.port}: connect: operation timed out"
            )
        for host in cluster.etcd_hosts:
            log.warning(f"Removing host [{host.address}] from node lists")
        failed = " ".join(h.address for h in cluster.etcd_hosts[:1])
        raise RkeError(
            "Cluster must have at least one etcd plane host: failed to connect to the following "
            f"etcd host(s) [{failed}]"
        )
    tunnel(cluster)
    current = state_cluster(full, "currentState", flags)
    if not flags.disable_port_check:
        check_ports(cluster, current)
    # SetUpAuthentication + compareCerts
    cluster.certificates = copy.deepcopy(full["desiredState"].get("certificatesBundle") or {})
    force = flags.custom_certs
    if current is not None:
        for name in (pki.KUBE_API, pki.ETCD):
            if cluster.certificates.get(name, {}).get(
                "certificatePEM", ""
            ) != current.certificates.get(name, {}).get("certificatePEM", ""):
                log.info(f"[certificates] {name} certificate changed, force deploying certs")
                force = True
                break
    set_up_hosts(cluster, force)
    reconcile(cluster, current, flags)
    if current is not None and not restore:
        workers = len(cluster.worker_hosts) + len(
            [h for h in cluster.inactive_hosts if not h.is_worker]
        )
        log.info(f"Setting maxUnavailable for worker nodes to: {max_unavailable(cluster, workers)}")
        log.info("Setting maxUnavailable for controlplane nodes to: 1")
    pre_pull(cluster)
    upgrade = current is not None and not restore
    # --update-only counts only for an existing cluster (ReconcileCluster resets it otherwise)
    workers_only = flags.update_only and current is not None
    deploy_etcd(cluster, workers_only)
    deploy_control_plane(cluster, upgrade, workers_only)
    if cluster.control_hosts and not workers_only:
        kubeapi.start(cluster)
    apply_authz(cluster)
    update_current_state(cluster, full)
    if faults.checkpoint("state"):
        log.info("[state] Saving full cluster state to Kubernetes")
        raise RkeError(
            "[state] error updating secret: [state] error getting secret: Get "
            f'"https://{cluster.control_hosts[0].address if cluster.control_hosts else "127.0.0.1"}'
            ':6443/api/v1/namespaces/kube-system/secrets/full-cluster-state?timeout=30s": '
            "context deadline exceeded"
        )
    save_full_state_to_k8s(cluster, full)
    deploy_worker_plane(cluster, upgrade)
    sync_labels(cluster)
    configure_cluster(cluster)
    if cluster.inactive_hosts:
        names = ",".join(h.address for h in cluster.inactive_hosts)
        raise RkeError(
            f"Provisioning incomplete, host(s) [{names}] skipped because they could not be contacted"
        )
    log.info("Finished building Kubernetes cluster successfully")


def max_unavailable(cluster, count: int) -> int:
    text = (cluster.config.get("upgrade_strategy") or {}).get("max_unavailable_worker", "10%")
    if text.endswith("%"):
        value = int(count * int(text[:-1]) / 100)
    else:
        value = int(text)
    return max(1, value)


def check_ports(cluster, current) -> None:
    if current is not None:
        known = {h.address for h in current.all_hosts}
        if all(h.address in known for h in cluster.all_hosts) and _same_roles(cluster, current):
            log.info("[network] No hosts added existing cluster, skipping port check")
            return
    log.info("[network] Deploying port listener containers")
    alpine = cluster.images.get("alpine", "")
    listeners = (
        (cluster.etcd_hosts, "rke-etcd-port-listener"),
        (cluster.control_hosts, "rke-cp-port-listener"),
        (cluster.worker_hosts, "rke-worker-port-listener"),
    )

    def names(host) -> list[str]:
        return [n for group, n in listeners if any(h.address == host.address for h in group)]

    def deploy(host) -> None:
        specs = [
            Spec(n, alpine, cmd=["nc", "-kl", "-p", "1337", "-e", "echo"]) for n in names(host)
        ]
        Docker(host).run("network", specs)

    errors = parallel(cluster.all_hosts, deploy)
    if errors:
        raise RkeError(err_list(errors))
    log.info("[network] Port listener containers deployed successfully")
    if len(cluster.etcd_hosts) > 1:
        log.info("[network] Running etcd <-> etcd port checks")
    log.info("[network] Running control plane -> etcd port checks")
    log.info("[network] Running control plane -> worker port checks")
    log.info("[network] Running workers -> control plane port checks")
    log.info("[network] Checking KubeAPI port Control Plane hosts")
    if faults.checkpoint("ports") and cluster.control_hosts:
        raise RkeError(
            "[network] Can't access KubeAPI port [6443] on Control Plane host: "
            f"{cluster.control_hosts[0].address}"
        )
    log.info("[network] Removing port listener containers")
    parallel(cluster.all_hosts, lambda h: Docker(h).remove(names(h)))
    log.info("[network] Port listener containers removed successfully")


def _same_roles(cluster, current) -> bool:
    def roles(c):
        return (
            {h.address for h in c.etcd_hosts},
            {h.address for h in c.control_hosts},
            {h.address for h in c.worker_hosts},
        )

    new, old = roles(cluster), roles(current)
    return all(n <= o for n, o in zip(new, old, strict=True))


def deploy_certs(cluster, host, bundle: pki.Bundle, force: bool) -> None:
    """pki.DeployCertificatesOnPlaneHost: the cert-deployer container."""
    env = pki.deployer_env(cluster, host, bundle)
    if force:
        env.append("FORCE_DEPLOY=true")
    image = cluster.images.get("cert_downloader", "")
    a = host.address
    spec = Spec(
        "cert-deployer",
        image,
        cmd=["cert-deployer"],
        env=env,
        privileged=True,
        binds=["/etc/kubernetes:/etc/kubernetes"],
    )
    plan = Plan(host)
    plan.call(["rm", "-f", "cert-deployer"])
    present = plan.call(["image", "inspect", image])
    plan.call(["pull", image], when=[[present, "nonzero"]])
    create = plan.call(["create", *spec.args()])
    start = plan.call(["start", "-a", "cert-deployer"], when=[[create, "zero"]])
    plan.call(["rm", "-f", "cert-deployer"], when=[[create, "zero"]])

    def after() -> None:
        log.info(f"Finding container [cert-deployer] on host [{a}], try #1")
        plan._image_log(image, present)
        if plan.results[create].rc != 0:
            raise RkeError(
                f"Failed to create Certificates deployer container on host [{a}]: Error response "
                f"from daemon: {plan.results[create].stderr.strip()}"
            )
        log.info(f"Starting container [cert-deployer] on host [{a}], try #1")
        if plan.results[start].rc not in (0, None):
            raise RkeError(
                f"Failed to start Certificates deployer container on host [{a}]: Error response "
                f"from daemon: {plan.results[start].stderr.strip()}"
            )
        log.info(f"Finding container [cert-deployer] on host [{a}], try #1")
        log.info(f"Removing container [cert-deployer] on host [{a}], try #1")

    plan.step(after)
    plan.execute()


def deploy_files(cluster, host_list, files: dict[str, str], done) -> None:
    """cluster.deployFile for each file: a file-deployer container writes it on every host."""
    image = cluster.images.get("alpine", "")

    def one(host) -> None:
        plan = Plan(host)
        for path, content in files.items():
            folder, name = os.path.split(path)
            plan.info(f"[file-deploy] Deploying file [{path}] to node [{host.address}]")
            plan.once(
                Spec(
                    "file-deployer",
                    image,
                    cmd=["true"],
                    binds=["/etc/kubernetes:/etc/kubernetes"],
                    privileged=True,
                ),
                files={folder: {name: (content.encode(), 0o600)}},
            )
        plan.execute()

    errors = parallel(host_list, one)
    if errors:
        raise RkeError(err_list(errors))
    for path in files:
        done(path)


ADMISSION = """apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- configuration:
    apiVersion: eventratelimit.admission.k8s.io/v1alpha1
    kind: Configuration
    limits:
    - burst: 20000
      qps: 5000
      type: Server
  name: EventRateLimit
- configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    defaults:
      audit: privileged
      audit-version: latest
      enforce: privileged
      enforce-version: latest
      warn: privileged
      warn-version: latest
    exemptions: {}
    kind: PodSecurityConfiguration
  name: PodSecurity
"""


def set_up_hosts(cluster, force: bool) -> None:
    """cluster.SetUpHosts: certificates on every node, the local kubeconfig, node files."""
    log.info("[certificates] Deploying kubernetes certificates to Cluster nodes")
    if faults.checkpoint("certs"):
        host = cluster.all_hosts[0] if cluster.all_hosts else None
        raise RkeError(
            f"[Failed to start Certificates deployer container on host [{host.address if host else ''}]: "
            "Error response from daemon: failed to create task for container: failed to create "
            "shim task: OCI runtime create failed: context deadline exceeded: unknown]"
        )
    bundle = pki.Bundle(cluster.certificates)
    errors = parallel(cluster.all_hosts, lambda h: deploy_certs(cluster, h, bundle, force))
    if errors:
        raise RkeError(err_list(errors))
    rebuild_kubeconfig(cluster)
    log.info("[certificates] Successfully deployed kubernetes certificates to Cluster nodes")
    api = cluster.config["services"]["kube-api"]
    files: dict[str, str] = {}
    messages = {}
    if "admission-control-config-file" not in (api.get("extra_args") or {}):
        files["/etc/kubernetes/admission.yaml"] = ADMISSION
        messages["/etc/kubernetes/admission.yaml"] = "admission control config"
    audit = api.get("audit_log")
    wanted = "audit-policy-file" not in (api.get("extra_args") or {})
    if isinstance(audit, dict) and audit.get("enabled") and wanted:
        import yaml

        policy = (audit.get("configuration") or {}).get("policy") or {}
        files["/etc/kubernetes/audit-policy.yaml"] = yaml.safe_dump(policy, sort_keys=True)
        messages["/etc/kubernetes/audit-policy.yaml"] = "audit policy file"
    if files:
        deploy_files(
            cluster,
            cluster.control_hosts,
            files,
            lambda path: log.info(
                f"[{path}] Successfully deployed {messages[path]} to Cluster control nodes"
            ),
        )


WORKER_CONTAINERS = ["kubelet", "kube-proxy", "nginx-proxy", "service-sidekick"]
CONTROL_CONTAINERS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
ETCD_CONTAINERS = ["etcd", "etcd-rolling-snapshots"]


def reconcile(cluster, current, flags: Flags) -> None:
    """cluster.ReconcileCluster: etcd members, then workers, then control planes removed."""
    log.info("[reconcile] Reconciling cluster state")
    if current is None:
        log.info("[reconcile] This is newly generated cluster")
        return
    if not current.certificates:
        raise RkeError(
            "Certificates are not present in cluster state, recover rkestate file or certificate "
            "information in cluster state"
        )
    api = kubeapi.client(cluster)
    inactive = {h.address for h in cluster.inactive_hosts}
    configured = {h.address: h for h in cluster.all_hosts}
    for old in current.all_hosts:  # syncNodeRoles
        if old.address in configured:
            new = configured[old.address]
            old.is_etcd, old.is_control, old.is_worker = new.is_etcd, new.is_control, new.is_worker

    def to_delete(before: list, after: list) -> list:
        kept = {h.address for h in after}
        return [h for h in before if h.address not in kept and h.address not in inactive]

    etcd_delete = to_delete(current.etcd_hosts, cluster.etcd_hosts)
    etcd_add = [h for h in cluster.etcd_hosts if h.address not in _addresses(current.etcd_hosts)]
    if current.etcd_hosts and not _addresses(current.etcd_hosts) & _addresses(cluster.etcd_hosts):
        raise RkeError(
            "Failed to reconcile etcd plane: Etcd plane nodes are replaced. Stopping "
            "provisioning. Please restore your cluster from backup."
        )
    log.info("[reconcile] Check etcd hosts to be deleted")
    for host in etcd_delete:
        host.is_etcd = False
        name = f"etcd-{host.hostname_override}"
        log.info(f"[remove/etcd] Removing member [{name}] from etcd cluster")
        for other in cluster.etcd_hosts[:1]:
            peer = f"etcd-{other.hostname_override}"
            log.info(
                f"[remove/etcd] Checking etcd cluster health on [{peer}] after removing [{name}]"
            )
            log.info(
                f"[remove/etcd] etcd cluster health is healthy on [{peer}] after removing [{name}]"
            )
        log.info(f"[remove/etcd] Successfully removed member [{name}] from etcd cluster")
        delete_node(cluster, api, host, host.is_control or host.is_worker)
        _clean_removed(cluster, host, "etcd", "Couldn't clean up etcd node")
    log.info("[reconcile] Check etcd hosts to be added")
    for host in etcd_add:
        name = f"etcd-{host.hostname_override}"
        log.info(f"[add/etcd] Adding member [{name}] to etcd cluster")
        log.info(f"[add/etcd] Successfully Added member [{name}] to etcd cluster")
    for host in to_delete(current.worker_hosts, cluster.worker_hosts):
        host.is_worker = False
        delete_node(cluster, api, host, host.is_control or host.is_etcd)
        _clean_removed(cluster, host, "worker", "Couldn't clean up worker node")
    control_delete = to_delete(current.control_hosts, cluster.control_hosts)
    if control_delete and len(control_delete) == len(current.control_hosts):
        log.info(
            "[reconcile] Deleting all current controlplane nodes, skipping deleting from k8s "
            "cluster"
        )
    else:
        for host in control_delete:
            delete_node(cluster, api, host, host.is_worker or host.is_etcd)
            _clean_removed(cluster, host, "controlplane", "Couldn't clean up controlplane node")
    rebuild_kubeconfig(cluster)
    log.info("[reconcile] Reconciled cluster state successfully")


def _addresses(hosts_list: list) -> set[str]:
    return {h.address for h in hosts_list}


def delete_node(cluster, api: dict | None, host, has_another_role: bool) -> None:
    """hosts.DeleteNode: cordon the node, then delete it from Kubernetes."""
    a = host.address
    if has_another_role:
        log.info(f"[hosts] host [{a}] has another role, skipping delete from kubernetes cluster")
        return
    log.info(f"[hosts] Cordoning host [{a}]")
    if api is None:  # no API server in this lab: the nodes live in the lab's store

        def change(store: dict) -> None:
            store.get("nodes", {}).pop(host.hostname_override, None)

        store_update(cluster, change, flush=False)
    elif not kubeapi.delete_node(api, host.hostname_override):
        log.warning(f"[hosts] Can't find node by name [{a}]")
        return
    log.info(f"[hosts] Deleting host [{a}] from the cluster")
    log.info(f"[hosts] Successfully deleted host [{a}] from the cluster")


# The directories each reconcile cleaner empties (hosts.CleanUp*Host); None: nothing to clean.
_NODE_DIRS = ["/etc/kubernetes/ssl", "/etc/cni", "/opt/cni", "/var/run/calico", "/var/lib/cni"]


def _clean_removed(cluster, host, plane: str, warning: str) -> None:
    """reconcileHost: remove the plane's containers from a node that left it, then clean it."""
    try:
        hosts.tunnel_up(host, cluster.version, agent_auth(cluster))
    except hosts.TunnelError as exc:
        log.warning(f"[reconcile] {warning} [{host.address}]: Not able to reach the host: {exc}")
        return
    try:
        docker = Docker(host)
        if plane == "worker":
            log.info("[worker] Tearing down Worker Plane..")
            if host.is_control:
                log.info(
                    f"[worker] Host [{host.address}] is already a controlplane host, nothing to do."
                )
            else:
                docker.remove(WORKER_CONTAINERS)
            log.info("[worker] Successfully tore down Worker Plane..")
            dirs = None if host.is_control or host.is_etcd else _NODE_DIRS
            skip = "is already a controlplane or etcd host, skipping cleanup."
        elif plane == "etcd":
            log.info("[etcd] Tearing down etcd plane..")
            both = host.is_worker and host.is_control  # RKE: `!IsWorker || !IsControl`
            docker.remove(ETCD_CONTAINERS + ([] if both else WORKER_CONTAINERS))
            log.info("[etcd] Successfully tore down etcd plane..")
            other = host.is_worker or host.is_control
            dirs = ["/var/lib/etcd"] if other else ["/var/lib/etcd", "/etc/kubernetes/ssl"]
            if other:
                log.info(
                    f"[hosts] Host [{host.address}] is already a worker or control host, "
                    "skipping cleanup certs."
                )
            skip = ""
        else:
            log.info("[controlplane] Tearing down the Controller Plane..")
            both = host.is_worker and host.is_etcd  # RKE: `!IsWorker || !IsEtcd`
            extra = [] if both else ["kubelet", "kube-proxy", "service-sidekick"]
            docker.remove(CONTROL_CONTAINERS + extra)
            log.info("[controlplane] Successfully tore down Controller Plane..")
            dirs = None if host.is_worker or host.is_etcd else _NODE_DIRS
            skip = "is already a worker or etcd host, skipping cleanup."
        if dirs is None:
            log.info(f"[hosts] Host [{host.address}] {skip}")
        else:
            clean_host(cluster, host, dirs)
    finally:
        if host.conn is not None:
            host.conn.close()
            host.conn = None


def pre_pull(cluster) -> None:
    log.info("Pre-pulling kubernetes images")
    images = [
        cluster.images.get("kubernetes", ""),
        cluster.config["services"]["kubelet"]["infra_container_image"],
    ]

    def one(host) -> None:
        plan = Plan(host)
        for image in images:
            present = plan.call(["image", "inspect", image])
            plan.call(["pull", image], when=[[present, "nonzero"]])
            plan.step(lambda image=image, present=present: plan._image_log(image, present))
        plan.execute()

    errors = parallel(cluster.all_hosts, one)
    if errors:
        raise RkeError(err_list(errors))
    log.info("Kubernetes images pulled successfully")


def _etcd_initial(cluster) -> str:
    return ",".join(
        f"etcd-{h.hostname_override}=https://{h.internal_address}:2380" for h in cluster.etcd_hosts
    )


def deploy_etcd(cluster, workers_only: bool = False) -> None:
    if faults.checkpoint("etcd"):
        names = ",".join(h.address for h in cluster.etcd_hosts)
        log.info("[etcd] Building up etcd plane..")
        raise RkeError(
            f"[etcd] Failed to bring up Etcd Plane: etcd cluster is unhealthy: hosts [{names}] "
            "failed to report healthy. Check etcd container logs on each host for more information"
        )
    etcd = cluster.config["services"]["etcd"]
    if etcd.get("external_urls"):
        log.info("[etcd] External etcd connection string has been specified, skipping etcd plane")
        return
    log.info("[etcd] Building up etcd plane..")
    alpine = cluster.images.get("alpine", "")
    for host in cluster.etcd_hosts:
        if workers_only:
            continue
        plan = Plan(host)
        plan.once(
            Spec(
                "etcd-fix-perm",
                alpine,
                cmd=["true"],
                binds=["/var/lib/etcd:/var/lib/rancher/etcd/"],
            )
        )
        plan.run(
            "etcd",
            [
                Spec(
                    "etcd",
                    cluster.images.get("etcd", ""),
                    cmd=[
                        "/usr/local/bin/etcd",
                        f"--name=etcd-{host.hostname_override}",
                        "--data-dir=/var/lib/rancher/etcd/",
                        f"--initial-cluster={_etcd_initial(cluster)}",
                        f"--advertise-client-urls=https://{host.internal_address}:2379",
                    ],
                    binds=[
                        "/var/lib/etcd:/var/lib/rancher/etcd/",
                        "/etc/kubernetes:/etc/kubernetes",
                    ],
                    network="host",
                    restart="always",
                )
            ],
        )
        if etcd.get("snapshot"):
            plan.info(
                f"[etcd] Running rolling snapshot container [etcd-rolling-snapshots] on host "
                f"[{host.address}]"
            )
            plan.remove(["etcd-rolling-snapshots"])
            plan.run(
                "etcd",
                [
                    Spec(
                        "etcd-rolling-snapshots",
                        alpine,
                        cmd=[
                            "/opt/rke-tools/rke-etcd-backup",
                            "etcd-backup",
                            "save",
                            f"--creation={etcd.get('creation', '12h')}",
                            f"--retention={etcd.get('retention', '72h')}",
                        ],
                        binds=[
                            "/opt/rke/etcd-snapshots:/backup",
                            "/etc/kubernetes:/etc/kubernetes",
                        ],
                        network="host",
                        restart="always",
                    )
                ],
            )
            plan.info(
                "[certificates] successfully saved certificate bundle "
                f"[/opt/rke/etcd-snapshots//pki.bundle.tar.gz] on host [{host.address}]"
            )
        else:
            plan.remove(["etcd-rolling-snapshots"])
        plan.execute()
    log.info("[etcd] Successfully started etcd plane.. Checking etcd cluster health")
    for host in cluster.etcd_hosts:
        log.info(f"[etcd] etcd host [{host.address}] reported healthy=true")
        break


def _control_specs(cluster, host) -> list[Spec]:
    image = cluster.images.get("kubernetes", "")
    binds = ["/etc/kubernetes:/etc/kubernetes"]
    etcd = ",".join(f"https://{h.internal_address}:2379" for h in cluster.etcd_hosts)
    api = cluster.config["services"]["kube-api"]
    return [
        Spec(
            "kube-apiserver",
            image,
            binds=binds,
            network="host",
            restart="always",
            cmd=[
                "/opt/rke-tools/entrypoint.sh",
                "kube-apiserver",
                f"--etcd-servers={etcd}",
                f"--service-cluster-ip-range={api['service_cluster_ip_range']}",
                f"--advertise-address={host.internal_address}",
            ],
        ),
        Spec(
            "kube-controller-manager",
            image,
            binds=binds,
            network="host",
            restart="always",
            cmd=["/opt/rke-tools/entrypoint.sh", "kube-controller-manager"],
        ),
        Spec(
            "kube-scheduler",
            image,
            binds=binds,
            network="host",
            restart="always",
            cmd=["/opt/rke-tools/entrypoint.sh", "kube-scheduler"],
        ),
    ]


def _worker_specs(cluster, host) -> list[Spec]:
    image = cluster.images.get("kubernetes", "")
    binds = ["/etc/kubernetes:/etc/kubernetes"]
    specs = []
    if not host.is_control:
        specs.append(
            Spec(
                "nginx-proxy",
                cluster.images.get("nginx_proxy", ""),
                network="host",
                restart="always",
                cmd=[
                    "nginx-proxy",
                    f"CP_HOSTS={','.join(h.internal_address for h in cluster.control_hosts)}",
                ],
            )
        )
    specs.append(
        Spec(
            "kubelet",
            image,
            binds=binds,
            network="host",
            restart="always",
            privileged=True,
            cmd=[
                "/opt/rke-tools/entrypoint.sh",
                "kubelet",
                f"--hostname-override={host.hostname_override}",
            ],
        )
    )
    specs.append(
        Spec(
            "kube-proxy",
            image,
            binds=binds,
            network="host",
            restart="always",
            privileged=True,
            cmd=["/opt/rke-tools/entrypoint.sh", "kube-proxy"],
        )
    )
    return specs


def deploy_control_plane(cluster, upgrade: bool, workers_only: bool = False) -> None:
    if faults.checkpoint("controlplane"):
        host = cluster.control_hosts[0].address if cluster.control_hosts else ""
        log.info("[controlplane] Building up Controller Plane..")
        raise RkeError(
            "[controlPlane] Failed to bring up Control Plane: [Failed to verify healthcheck: "
            f"Failed to check https://localhost:6443/healthz for service [kube-apiserver] on host "
            f'[{host}]: Get "https://localhost:6443/healthz": context deadline exceeded, log: ]'
        )
    if workers_only:
        return
    if not upgrade:
        log.info("[controlplane] Building up Controller Plane..")
    else:
        log.info("[controlplane] Processing controlplane hosts for upgrade 1 at a time")

    def one(host) -> None:
        if upgrade:
            log.info(f"Processing controlplane host {host.hostname_override}")
        Docker(host).run(
            "controlplane", _control_specs(cluster, host), health=tuple(CONTROL_CONTAINERS)
        )
        if upgrade:
            log.info(
                f"Upgrade not required for controlplane and worker components of host {host.hostname_override}"
            )

    errors = parallel(cluster.control_hosts, one)
    if errors:
        raise RkeError(f"[controlPlane] Failed to bring up Control Plane: {err_list(errors)}")
    if upgrade:
        log.info("[controlplane] Successfully upgraded Controller Plane..")
    else:
        log.info("[controlplane] Successfully started Controller Plane..")


def apply_authz(cluster) -> None:
    if not cluster.control_hosts:
        return
    log.info("[authz] Creating rke-job-deployer ServiceAccount")
    log.info("[authz] rke-job-deployer ServiceAccount created successfully")
    if cluster.config["authorization"].get("mode") == "none":
        return
    log.info("[authz] Creating system:node ClusterRoleBinding")
    log.info("[authz] system:node ClusterRoleBinding created successfully")
    log.info("[authz] Creating kube-apiserver proxy ClusterRole and ClusterRoleBinding")
    log.info("[authz] kube-apiserver proxy ClusterRole and ClusterRoleBinding created successfully")


def update_current_state(cluster, full: dict) -> None:
    """Cluster.UpdateClusterCurrentState."""
    full["currentState"] = {
        "rkeConfig": schema.to_json(cluster.config),
        "certificatesBundle": cluster.certificates,
        "encryptionConfig": full.get("desiredState", {}).get("encryptionConfig", ""),
    }
    st.write_state(cluster.state_file_path, full)


def _pruned(full: dict) -> dict:
    return {
        "desiredState": st._prune(full.get("desiredState") or {}),
        "currentState": st._prune(full.get("currentState") or {}),
    }


def save_full_state_to_k8s(cluster, full: dict) -> None:
    log.info("[state] Saving full cluster state to Kubernetes")
    payload = json.dumps(_pruned(full), separators=(",", ":"))
    api = kubeapi.client(cluster)
    if api is not None:
        kubeapi.save_full_state(api, payload)
        return

    def change(store: dict) -> None:
        store.setdefault("secrets", {})["kube-system/full-cluster-state"] = {
            "full-cluster-state": payload
        }
        store.setdefault("configmaps", {}).pop("kube-system/full-cluster-state", None)

    store_update(cluster, change)


def deploy_worker_plane(cluster, upgrade: bool) -> None:
    if faults.checkpoint("worker"):
        host = cluster.all_hosts[-1].address if cluster.all_hosts else ""
        log.info("[worker] Building up Worker Plane..")
        raise RkeError(
            "[workerPlane] Failed to bring up Worker Plane: [Failed to verify healthcheck: Failed "
            f"to check http://localhost:10248/healthz for service [kubelet] on host [{host}]: Get "
            '"http://localhost:10248/healthz": dial tcp 127.0.0.1:10248: connect: connection '
            "refused, log: ]"
        )
    if upgrade:
        log.info("[worker] Upgrading Worker Plane..")
        if any(not h.is_control and not h.is_etcd for h in cluster.all_hosts):
            log.info(
                "Now checking and upgrading worker components on nodes with only worker role 1 at a time"
            )
    else:
        log.info("[worker] Building up Worker Plane..")
    errors = parallel(
        cluster.all_hosts,
        lambda h: Docker(h).run(
            "worker", _worker_specs(cluster, h), health=("kubelet", "kube-proxy")
        ),
    )
    if errors:
        raise RkeError(f"[workerPlane] Failed to bring up Worker Plane: {err_list(errors)}")
    log.info(
        "[worker] Successfully upgraded Worker Plane.."
        if upgrade
        else "[worker] Successfully started Worker Plane.."
    )


def sync_labels(cluster) -> None:
    if not cluster.control_hosts:
        return
    log.info("[sync] Syncing nodes Labels and Taints")
    api = kubeapi.client(cluster)
    if api is not None:
        kubeapi.sync_nodes(api, cluster)
        log.info("[sync] Successfully synced nodes Labels and Taints")
        return

    def change(store: dict) -> None:
        nodes = {}
        for host in cluster.all_hosts:
            labels = dict(host.node.get("labels") or {})
            for flag, role in (
                (host.is_etcd, "etcd"),
                (host.is_control, "controlplane"),
                (host.is_worker, "worker"),
            ):
                if flag:
                    labels[f"node-role.kubernetes.io/{role}"] = "true"
            nodes[host.hostname_override] = {
                "address": host.address,
                "internalAddress": host.internal_address,
                "labels": labels,
                "taints": host.node.get("taints") or [],
            }
        store["nodes"] = nodes

    store_update(cluster, change, flush=False)
    log.info("[sync] Successfully synced nodes Labels and Taints")


def _addon(name: str) -> None:
    log.info(f"[addons] Saving ConfigMap for addon {name} to Kubernetes")
    log.info(f"[addons] Successfully saved ConfigMap for addon {name} to Kubernetes")
    log.info(f"[addons] Executing deploy job {name}")


def configure_cluster(cluster) -> None:
    """cluster.ConfigureCluster: network plugin, DNS, metrics server, ingress, user addons."""
    if not cluster.control_hosts:
        return
    config = cluster.config
    plugin = config["network"]["plugin"]
    log.info(f"[network] Setting up network plugin: {plugin}")
    if faults.checkpoint("addons"):
        _addon_start("rke-network-plugin")
        raise RkeError(
            "Failed to get job complete status for job rke-network-plugin-deploy-job in namespace "
            "kube-system"
        )
    warn = faults.addon_job_warning
    if plugin == "none":
        log.info("[network] Not deploying a cluster network, expecting custom CNI")
    elif warn:
        name = warn if isinstance(warn, str) else "rke-network-plugin"
        _addon_start("rke-network-plugin")
        log.warning(
            f"Failed to deploy addon execute job [{name}]: Failed to get job complete status for "
            f"job {name}-deploy-job in namespace kube-system"
        )
    else:
        _addon("rke-network-plugin")
    dns = config["dns"].get("provider")
    if dns == "coredns":
        log.info("[addons] Setting up coredns")
        _addon("rke-coredns-addon")
        log.info("[addons] CoreDNS deployed successfully")
        log.info("[dns] DNS provider coredns deployed successfully")
    elif dns == "kube-dns":
        log.info("[addons] Setting up kube-dns")
        _addon("rke-kube-dns-addon")
        log.info("[addons] kube-dns deployed successfully")
        log.info("[dns] DNS provider kube-dns deployed successfully")
    elif dns != "none":
        log.warning(f"[dns] No valid DNS provider configured: {dns}")
    if config["monitoring"].get("provider") == "none":
        log.info("[ingress] Metrics Server is disabled, skipping Metrics server installation")
    else:
        log.info("[addons] Setting up Metrics Server")
        _addon("rke-metrics-addon")
        log.info("[addons] Metrics Server deployed successfully")
    if config["ingress"].get("provider") == "none":
        log.info("[ingress] ingress controller is disabled, skipping ingress controller")
    else:
        log.info("[ingress] Setting up nginx ingress controller")
        log.info("[ingress] removing admission batch jobs if they exist")
        _addon("rke-ingress-controller")
        log.info("[ingress] removing default backend service and deployment if they exist")
        log.info("[ingress] ingress controller nginx deployed successfully")
    log.info("[addons] Setting up user addons")
    if config.get("addons"):
        _addon("rke-user-addon")
        log.info("[addons] User addons deployed successfully")
    else:
        log.info("[addons] no user addons defined")
    log.info("[addons] Checking for included user addons")
    if config.get("addons_include"):
        for item in config["addons_include"]:
            log.info(f"[addons] Adding addon from {item}")
        log.info("[addons] Deploying rke-user-includes-addons")
        _addon("rke-user-includes-addons")
    else:
        log.info("[addons] No included addon paths or urls")
    api = kubeapi.client(cluster)
    if api is not None:
        kubeapi.deploy_addons(api, cluster)
        return

    def change(store: dict) -> None:
        store.setdefault("configmaps", {})["kube-system/rke-network-plugin"] = {"plugin": plugin}

    store_update(cluster, change)


def _addon_start(name: str) -> None:
    log.info(f"[addons] Saving ConfigMap for addon {name} to Kubernetes")
    log.info(f"[addons] Successfully saved ConfigMap for addon {name} to Kubernetes")
    log.info(f"[addons] Executing deploy job {name}")


# --- cert rotate (rebuildClusterWithRotatedCertificates) ----------------------------------------
def rebuild_with_rotated_certificates(flags: Flags) -> None:
    log.info("Rebuilding Kubernetes cluster with rotated certificates")
    full = load_state(flags)
    cluster = cfg.init_cluster_object(
        schema.from_json(full["desiredState"]["rkeConfig"]), flags.config_path
    )
    try:
        tunnel(cluster)
        cluster.certificates = copy.deepcopy(full["desiredState"].get("certificatesBundle") or {})
        set_up_hosts(cluster, True)
        update_current_state(cluster, full)
        kubeapi.start(cluster)
        try:
            save_full_state_to_k8s(cluster, full)
        except RkeError as exc:
            log.warning(f"Failed to save full state to Kubernetes: {exc}")
        rotate = cluster.config.get("rotate_certificates") or {}
        services = list(rotate.get("services") or [])
        if not services or rotate.get("cacertificates") or "etcd" in services:
            log.info("[etcd] Restarting up etcd plane..")
            parallel(cluster.etcd_hosts, lambda h: Docker(h).restart(["etcd"]))
            log.info("[etcd] Successfully restarted etcd plane..")
        log.info("[controlplane] Restarting the Controller Plane..")
        parallel(cluster.control_hosts, lambda h: Docker(h).restart(CONTROL_CONTAINERS))
        log.info("[controlplane] Successfully restarted Controller Plane..")
        log.info("[worker] Restarting Worker Plane..")
        parallel(cluster.all_hosts, lambda h: Docker(h).restart(["kubelet", "kube-proxy"]))
        log.info("[worker] Successfully restarted Worker Plane..")
        if rotate.get("cacertificates"):
            log.info("Restarting network, ingress, and metrics pods")
    finally:
        hosts.close_all(cluster)


# --- remove (cluster/remove.go) ------------------------------------------------------------------
def clean_host(cluster, host, only: list[str] | None = None) -> None:
    """Host.CleanUpAll (or, given `only`, Host.CleanUp of those directories, as reconcile
    does): the kube-cleaner container empties rke's directories."""
    prefix = cluster.config.get("prefix_path", "/") or "/"

    def join(path: str) -> str:
        return os.path.join(prefix, path.lstrip("/")) if prefix != "/" else path

    dirs = [
        join("/etc/kubernetes/"),
        "/etc/cni/",
        "/opt/cni/",
        "/var/run/calico/",
        join("/etc/kubernetes/.tmp/"),
        join("/var/lib/cni/"),
    ]
    if not cluster.config["services"]["etcd"].get("external_urls"):
        dirs.append(join("/var/lib/etcd/"))
    if only is not None:
        dirs = [join(d) + "/" for d in only]
    alpine = cluster.images.get("alpine", "")
    a = host.address
    log.info(f"[hosts] Cleaning up host [{a}]")
    log.info(f"[hosts] Running cleaner container on host [{a}]")
    Docker(host).run_once(
        "kube-cleaner",
        Spec(
            "kube-cleaner",
            alpine,
            cmd=["sh", "-c", f"find {' '.join(dirs)} -mindepth 1 -delete"],
            binds=[f"{d}:{d}" for d in dirs],
        ),
        quiet_remove=True,
    )
    log.info(f"[hosts] Removing cleaner container on host [{a}]")
    log.info(f"[hosts] Removing dead container logs on host [{a}]")
    Docker(host).run_once(
        "rke-log-cleaner",
        Spec("rke-log-cleaner", alpine, cmd=["true"], binds=["/var/lib:/var/lib"]),
    )
    log.info(f"[hosts] Successfully cleaned up host [{a}]")


def cleanup_nodes(cluster) -> None:
    """Cluster.CleanupNodes."""
    log.info("[worker] Tearing down Worker Plane..")
    errors = parallel(cluster.worker_hosts, lambda h: Docker(h).remove(WORKER_CONTAINERS))
    if errors:
        raise RkeError(err_list(errors))
    log.info("[worker] Successfully tore down Worker Plane..")
    log.info("[controlplane] Tearing down the Controller Plane..")
    errors = parallel(
        cluster.control_hosts,
        lambda h: Docker(h).remove(
            CONTROL_CONTAINERS + ["kubelet", "kube-proxy", "service-sidekick"]
        ),
    )
    if errors:
        raise RkeError(err_list(errors))
    log.info("[controlplane] Successfully tore down Controller Plane..")
    if not cluster.config["services"]["etcd"].get("external_urls"):
        log.info("[etcd] Tearing down etcd plane..")
        errors = parallel(
            cluster.etcd_hosts, lambda h: Docker(h).remove(ETCD_CONTAINERS + WORKER_CONTAINERS)
        )
        if errors:
            raise RkeError(err_list(errors))
        log.info("[etcd] Successfully tore down etcd plane..")
    if faults.checkpoint("remove"):
        host = cluster.all_hosts[0].address if cluster.all_hosts else ""
        raise RkeError(
            f"[Failed to start [kube-cleaner] container on host [{host}]: Error response from "
            "daemon: failed to create task for container: context deadline exceeded]"
        )
    hosts_list = cfg.unique_hosts(cluster.control_hosts, cluster.worker_hosts, cluster.etcd_hosts)
    errors = parallel(hosts_list, lambda h: clean_host(cluster, h))
    if errors:
        raise RkeError(err_list(errors))


def cluster_remove(config: dict, flags: Flags) -> None:
    log.info("Tearing down Kubernetes cluster")
    cluster = cfg.init_cluster_object(config, flags.config_path)
    try:
        tunnel(cluster)
        log.debug("Starting Cluster removal")
        cleanup_nodes(cluster)
        kubeapi.stop(cluster)
    finally:
        hosts.close_all(cluster)
    st.remove_admin_config(cluster.kube_config_path)
    st.remove_state_file(cluster.state_file_path)
    log.info("Cluster removed successfully")


# --- etcd snapshots (cmd/etcd.go, cluster/etcd.go, services/etcd.go) ---------------------------
def deploy_state_file(cluster, state_path: str, name: str) -> None:
    if not os.path.exists(state_path):
        log.warning(
            f"Could not read cluster state file from [{state_path}], file does not exist. Snapshot "
            "will be created without cluster state file. You can retrieve the cluster state file "
            "using 'rke util get-state-file'"
        )
        return
    with open(state_path, "rb") as fh:
        data = fh.read()
    image = cluster.images.get("cert_downloader", "")

    def one(host) -> None:
        log.info(
            f"[state] Deploying state file to [/etc/kubernetes/{name}.rkestate] on host [{host.address}]"
        )
        Docker(host).run_once(
            "state",
            Spec(
                "cluster-state-deployer",
                image,
                cmd=["true"],
                privileged=True,
                binds=["/etc/kubernetes:/etc/kubernetes"],
            ),
            files={"/etc/kubernetes": {f"{name}.rkestate": (data, 0o400)}},
        )

    errors = parallel(cluster.etcd_hosts, one)
    if errors:
        raise RkeError(err_list(errors))


def snapshot_etcd(cluster, name: str) -> None:
    backup = cluster.config["services"]["etcd"].get("backup_config")
    image = cluster.images.get("alpine", "")
    first_error = None
    failures = 0
    for host in cluster.etcd_hosts:
        log.info(f"[etcd] Running snapshot save once on host [{host.address}]")
        docker = Docker(host)
        try:
            if faults.checkpoint("snapshot"):
                raise RkeError(
                    f"failed to take one-time snapshot on host [{host.address}], exit code [1]: "
                    "Error: context deadline exceeded"
                )
            docker.remove(["etcd-snapshot-once"])
            if not docker.running("etcd"):
                raise RkeError(f"etcd is not running on host [{host.address}]")
            done = docker.run_once(
                "etcd",
                Spec(
                    "etcd-snapshot-once",
                    image,
                    cmd=[
                        "/opt/rke-tools/rke-etcd-backup",
                        "etcd-backup",
                        "save",
                        "--name",
                        name,
                        "--once",
                    ],
                    binds=["/opt/rke/etcd-snapshots:/backup", "/etc/kubernetes:/etc/kubernetes"],
                    network="host",
                ),
            )
            if done.rc != 0:
                raise RkeError(
                    f"failed to take one-time snapshot on host [{host.address}], exit code "
                    f"[{done.rc}]: {done.text.strip()}"
                )
        except RkeError as exc:
            failures += 1
            first_error = first_error or str(exc)
    if failures == len(cluster.etcd_hosts):
        log.warning(f"[etcd] Failed to take snapshot on all etcd hosts: {first_error}")
        raise RkeError(f"[etcd] Failed to take snapshot on all etcd hosts: {first_error}")
    if failures:
        log.warning(f"[etcd] Failed to take snapshot on %!s(int={failures}) etcd hosts")
    else:
        log.info(f"[etcd] Finished saving snapshot [{name}] on all etcd hosts")
    if backup is not None and backup.get("s3backupconfig") is None:
        return
    log.info("[etcd] Finished uploading etcd snapshot file to s3 on all etcd hosts")


def snapshot_save(config: dict, flags: Flags, name: str) -> None:
    log.info("Starting saving snapshot on etcd hosts")
    state_path = cfg.state_file_path(flags.config_path)
    cluster = cfg.init_cluster_object(config, flags.config_path)
    try:
        tunnel(cluster)
        deploy_state_file(cluster, state_path, name)
        snapshot_etcd(cluster, name)
    finally:
        hosts.close_all(cluster)
    log.info(f"Finished saving/uploading snapshot [{name}] on all etcd hosts")


def validate_certs(state: dict) -> None:
    if not state.get("rkeConfig"):
        return
    errors = []
    for name, entry in sorted((state.get("certificatesBundle") or {}).items()):
        if name in (pki.SA_TOKEN, pki.REQUEST_HEADER_CA, pki.KUBE_ADMIN):
            continue
        cert = pki.load_cert(entry.get("certificatePEM", ""))
        if cert is None:
            errors.append(f"Certificate [{entry.get('name', name)}] is nil")
        elif cert.not_valid_after_utc.timestamp() < time.time():
            errors.append(
                f"Certificate [{entry.get('name', name)}] failed verification: x509: certificate "
                "has expired or is not yet valid"
            )
    if errors:
        raise RkeError(
            "[etcd] Failed to restore etcd snapshot: invalid certs: " + ": ".join(reversed(errors))
        )


def snapshot_restore(config: dict, flags: Flags, name: str) -> None:
    state_path = cfg.state_file_path(flags.config_path)
    retrieved = False
    full = st.empty_state()
    if not flags.use_local_state:
        log.info(f"Checking if state file is included in snapshot file for [{name}]")
        temp = cfg.init_cluster_object(config, flags.config_path)
        try:
            tunnel(temp)
            content = None
            for host in temp.etcd_hosts:
                done = Docker(host).run_once(
                    "etcd",
                    Spec(
                        "etcd-extract-statefile",
                        temp.images.get("alpine", ""),
                        network="host",
                        cmd=[
                            "/opt/rke-tools/rke-etcd-backup",
                            "etcd-backup",
                            "extractstatefile",
                            "--name",
                            name,
                        ],
                        binds=["/opt/rke/etcd-snapshots:/backup"],
                    ),
                )
                if done.rc == 0 and done.text.strip():
                    content = done.text
                    break
                log.info(
                    f"Could not extract state file from snapshot [{name}] on host [{host.address}]"
                )
        finally:
            hosts.close_all(temp)
        if content is None:
            log.info(
                f"Could not extract state file from snapshot [{name}] on any host, falling back to "
                f"local state file: Unable to find statefile in snapshot [{name}]"
            )
            full, _ = st.read_state(state_path)
        else:
            try:
                full = json.loads(content)
            except json.JSONDecodeError as exc:
                log.error(f"Error when converting state file contents to rkeFullState: {exc}")
                raise RkeError(str(exc)) from None
            full.setdefault("desiredState", {})
            full.setdefault("currentState", {})
            log.info(f"State file is successfully extracted from snapshot [{name}]")
            retrieved = True
    else:
        log.info(
            f"Not checking if state file is included in snapshot file for [{name}], using local "
            f"state file [{state_path}]"
        )
        full, error = st.read_state(state_path)
        if error:
            raise RkeError(error)
    log.info(f"Restoring etcd snapshot {name}")
    cluster = cfg.init_cluster_object(config, flags.config_path)
    validate_certs(full.get("desiredState", {}))
    try:
        if not retrieved or flags.use_local_state:
            check_legacy_cluster(cluster, full, flags)
        full["currentState"] = {}
        st.write_state(state_path, full)
        tunnel(cluster)
        bundle = pki.Bundle(full["desiredState"].get("certificatesBundle") or {})
        restore_bundle = pki.Bundle(
            {k: bundle.entries[k] for k in (pki.CA, pki.KUBE_NODE) if k in bundle.entries}
        )
        errors = parallel(
            cluster.etcd_hosts, lambda h: deploy_certs(cluster, h, restore_bundle, False)
        )
        if errors:
            raise RkeError(err_list(errors))
        prepare_backup(cluster, name)
        log.info("Cleaning old kubernetes cluster")
        cleanup_nodes(cluster)
        image = cluster.images.get("etcd", "")
        for host in cluster.etcd_hosts:
            log.info(f"[etcd] Restoring [{name}] snapshot on etcd host [{host.address}]")
            if faults.checkpoint("restore"):
                raise RkeError(
                    "[etcd] Failed to restore etcd snapshot: Failed to run etcd restore container, "
                    "exit status is: 1, container logs: Error: context deadline exceeded"
                )
            done = Docker(host).run_once(
                "etcd",
                Spec(
                    "etcd-restore",
                    image,
                    cmd=["etcd-restore", name],
                    binds=[
                        "/opt/rke/etcd-snapshots:/backup",
                        "/var/lib/etcd:/var/lib/rancher/etcd/",
                    ],
                ),
            )
            if done.rc != 0:
                raise RkeError(
                    "[etcd] Failed to restore etcd snapshot: Failed to run etcd restore container, "
                    f"exit status is: {done.rc}, container logs: {done.text.strip()}"
                )
    finally:
        hosts.close_all(cluster)
    cluster_init(config, flags)
    try:
        cluster_up(flags, restore=True)
    except RkeError as exc:
        if "Provisioning incomplete" not in str(exc):
            raise
        log.warning(str(exc))
    log.info("Restarting network, ingress, and metrics pods")
    log.info(f"Finished restoring snapshot [{name}] on all etcd hosts")


def prepare_backup(cluster, name: str) -> None:
    backup = cluster.config["services"]["etcd"].get("backup_config")
    if backup is None:
        log.info("[etcd] No etcd snapshot configuration found, will use local as source")
    else:
        log.info(
            "[etcd] etcd snapshot configuration found and no s3 backup configuration found, will use local as source"
        )
    server = None
    data = None
    for host in cluster.etcd_hosts:
        docker = Docker(host)
        log.info(
            f"Stopping container [etcd] on host [{host.address}] with stopTimeoutDuration [5s], try #1"
        )
        host.conn.one("stop", "etcd")
        log.info(f"[etcd] starting backup server on host [{host.address}]")
        docker.run(
            "etcd",
            [
                Spec(
                    "etcd-Serve-backup",
                    cluster.images.get("alpine", ""),
                    binds=["/opt/rke/etcd-snapshots:/backup"],
                    network="host",
                    cmd=["/opt/rke-tools/rke-etcd-backup", "etcd-backup", "serve", "--name", name],
                )
            ],
        )
        data = docker.copy_from("etcd-Serve-backup", f"/backup/{name}.zip")
        if data is None:
            log.warning(
                f"failed to start backup server on host [{host.address}]: Unable to find snapshot "
                f"[{name}] on host [{host.address}]"
            )
            docker.remove(["etcd-Serve-backup"])
            continue
        server = host
        break
    if server is None:
        for host in cluster.etcd_hosts:
            host.conn.one("start", "etcd")
        raise RkeError("failed to start backup server on all etcd nodes: [Unable to find snapshot]")
    for host in cluster.etcd_hosts:
        if host is server:
            continue
        log.info(f"[etcd] Get snapshot [{name}] on host [{host.address}]")
        docker = Docker(host)
        docker.run_once(
            "etcd",
            Spec(
                "etcd-download-backup",
                cluster.images.get("alpine", ""),
                cmd=["true"],
                binds=["/opt/rke/etcd-snapshots:/backup"],
            ),
            files={"/backup": {f"{name}.zip": (data, 0o600)}},
        )
    Docker(server).remove(["etcd-Serve-backup"])
    log.info("[etcd] Checking if all snapshots are identical")
    sums = []
    for host in cluster.etcd_hosts:
        content = Docker(host).copy_from("etcd-rolling-snapshots", f"/backup/{name}.zip")
        if content is None:
            host.conn.raw(
                [
                    {
                        "args": [
                            "create",
                            "--name",
                            "lab-snapshot-reader",
                            "-v",
                            "/opt/rke/etcd-snapshots:/backup",
                            cluster.images.get("alpine", ""),
                            "true",
                        ]
                    }
                ]
            )
            content = Docker(host).copy_from("lab-snapshot-reader", f"/backup/{name}.zip")
            host.conn.one("rm", "-f", "lab-snapshot-reader")
        checksum = hashlib.md5(content or b"", usedforsecurity=False).hexdigest()
        sums.append(checksum)
        log.info(f"[etcd] Checksum of etcd snapshot on host [{host.address}] is [{checksum}]")
    if len(set(sums)) > 1:
        raise RkeError("etcd snapshots are not consistent")


# --- util get-state-file / get-kubeconfig (cmd/util.go) ------------------------------------------
def get_state_file(ctx) -> None:
    log.info("Retrieving state file from cluster")
    kubeconfig = cfg.kube_config_path(ctx.string("config"))
    text = resolve_cluster_file(ctx.string("config"), lower=True)
    flags = Flags(config_path=ctx.string("config"))
    try:
        version = kube.server_version(kubeconfig)
    except kube.KubeError as exc:
        log.info(
            "Unable to connect to server using kubeconfig, trying to get state from Control Plane "
            f"node(s), error: {exc}"
        )
        config = set_options_from_cli(ctx, parse_config(text, lower=True))
        retrieve_from_configmap(config, flags)
        return
    log.info(
        f"Successfully connected to server using kubeconfig, retrieved server version [{version}]"
    )
    try:
        secret = kube.get_secret(kubeconfig, "full-cluster-state")
        content = base64.b64decode(secret["data"]["full-cluster-state"]).decode()
        full = json.loads(content)
    except (kube.KubeError, KeyError, ValueError) as exc:
        raise RkeError(
            f"error getting full cluster state from secret: [state] error getting full state from "
            f"secret: [state] error getting secret full-cluster-state: {exc}"
        ) from None
    path = cfg.state_file_path(flags.config_path)
    st.replace_with_backup(path, "rkestate")
    st.write_state(path, full)


def retrieve_from_configmap(config: dict, flags: Flags) -> None:
    """cmd.RetrieveClusterStateConfigMap: kubectl on a control plane node reads the ConfigMap."""
    temp = cfg.init_cluster_object(config, flags.config_path)
    try:
        tunnel(temp)
        content = ""
        store = None
        for host in temp.control_hosts:
            docker = Docker(host)
            docker.run_once(
                "controlplane",
                Spec(
                    "extract-statefile-configmap",
                    temp.images.get("kubernetes", ""),
                    cmd=["true"],
                    network="host",
                    binds=["/etc/kubernetes:/etc/kubernetes"],
                ),
            )
            apiserver = host.conn.one("inspect", "--format", "{{json .}}", "kube-apiserver")
            if apiserver.rc == 0 and json.loads(apiserver.text)["State"]["Running"]:
                store = store if store is not None else (store_read(temp) or {})
                entry = store.get("configmaps", {}).get("kube-system/full-cluster-state") or {}
                content = entry.get("full-cluster-state", "")
            if content:
                break
            log.info(f"Could not get ConfigMap with cluster state from host [{host.address}]")
        if not content:
            raise RkeError(
                "[state] Unable to get ConfigMap with cluster state from any Control Plane host"
            )
        full = json.loads(content)
        path = cfg.state_file_path(flags.config_path)
        st.replace_with_backup(path, "rkestate")
        st.write_state(path, full)
        st.copy_with_prefix(temp.kube_config_path, "kube_config")
        current = state_cluster(full, "currentState", flags)
        if current is not None:
            for host in current.all_hosts:
                match = next((h for h in temp.all_hosts if h.address == host.address), None)
                host.conn = match.conn if match else None
            rebuild_kubeconfig(current)
            for host in current.all_hosts:
                host.conn = None
    finally:
        hosts.close_all(temp)


def get_kubeconfig(ctx) -> None:
    log.info("Creating new kubeconfig file")
    text = resolve_cluster_file(ctx.string("config"), lower=True)
    flags = Flags(config_path=ctx.string("config"))
    config = set_options_from_cli(ctx, parse_config(text, lower=True))
    full = load_state(flags)
    temp = cfg.init_cluster_object(config, flags.config_path)
    st.copy_with_prefix(temp.kube_config_path, "kube_config")
    current = state_cluster(full, "currentState", flags)
    if current is None:
        raise SystemExit(_go_panic())
    rebuild_kubeconfig(current)


def _go_panic() -> int:
    import sys

    sys.stderr.write(
        "panic: runtime error: invalid memory address or nil pointer dereference\n"
        "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]\n\n"
        "goroutine 1 [running]:\ngithub.com/rancher/rke/cluster.RebuildKubeconfig(...)\n"
    )
    sys.stderr.flush()
    return 2


# --- encrypt rotate-key ----------------------------------------------------------------------------
def rotate_encryption_key(config: dict, flags: Flags) -> None:
    log.info("Rotating cluster secrets encryption key")
    path = cfg.state_file_path(flags.config_path)
    full, _ = st.read_state(path)
    cluster = cfg.init_cluster_object(config, flags.config_path)
    enc = cluster.config["services"]["kube-api"].get("secrets_encryption_config") or {}
    if isinstance(enc, dict) and enc.get("custom_config"):
        raise RkeError(
            "can't rotate encryption keys: Key Rotation is not supported with custom configuration"
        )
    if not encryption_enabled(cluster.config):
        raise RkeError(
            "can't rotate encryption keys: Encryption Configuration is disabled. Please disable "
            "rotate_encryption_key and run rke up again"
        )
    try:
        tunnel(cluster)
        new = new_encryption_config()
        deploy_files(
            cluster,
            cluster.control_hosts,
            {"/etc/kubernetes/ssl/encryption.yaml": new},
            lambda p: None,
        )
        parallel(cluster.control_hosts, lambda h: Docker(h).restart(["kube-apiserver"]))
        full["desiredState"]["encryptionConfig"] = new
        full.setdefault("currentState", {})["encryptionConfig"] = new
        st.write_state(path, full)
        log.info("Reconciling cluster state")
    finally:
        hosts.close_all(cluster)
    log.info("Cluster secrets encryption key rotated successfully")
