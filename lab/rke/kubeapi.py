"""What rke and the components it starts write through the lab's Kubernetes API.

With a lab supervisor (`LAB_KUBE_SUPERVISOR`, see lab.kube) the control plane step starts the
cluster's API server there, and from then on rke talks to it as real rke does with client-go:
the Secret `kube-system/full-cluster-state`, node labels and taints, the add-ons' workloads. The
nodes' registration and the add-on jobs' effects (what kubelet and `kubectl apply` in the
add-on jobs would do) are written here too. Without a supervisor nothing listens on 6443.
"""

from __future__ import annotations

import json
import uuid

from lab.kube import supervisor
from lab.kube.store import STORE_RELATIVE
from lab.rke import kube, pki
from lab.rke.errors import RkeError
from lab.rke.logrus import log


def start(cluster) -> None:
    """Start (or restart, with current certificates) the API server of the first control plane."""
    if not supervisor.configured() or not cluster.control_hosts:
        return
    certs = cluster.certificates
    roots = [h.conn.node_root() for h in cluster.etcd_hosts if h.conn is not None]
    try:
        supervisor.call(
            "start",
            address=cluster.control_hosts[0].address,
            advertise_address=cluster.control_hosts[0].internal_address,
            ca_pem=certs[pki.CA]["certificatePEM"],
            ca_key_pem=certs[pki.CA]["keyPEM"],
            cert_pem=certs[pki.KUBE_API]["certificatePEM"],
            key_pem=certs[pki.KUBE_API]["keyPEM"],
            sa_key_pem=(certs.get(pki.SA_TOKEN) or certs[pki.KUBE_API])["keyPEM"],
            version=cluster.config.get("kubernetes_version", ""),
            store_paths=[f"{root}/{STORE_RELATIVE}" for root in roots if root],
        )
    except (supervisor.SupervisorError, KeyError) as exc:
        log.warning(f"[lab] Kubernetes API server not started: {exc}")


def stop(cluster) -> None:
    if supervisor.configured() and cluster.control_hosts:
        try:
            supervisor.call("stop", address=cluster.control_hosts[0].address)
        except supervisor.SupervisorError as exc:
            log.warning(f"[lab] Kubernetes API server not stopped: {exc}")


def client(cluster) -> dict | None:
    """The admin credentials on the first control plane's API when it answers, else None."""
    if not cluster.control_hosts:
        return None
    try:
        config = kube.load(cluster.kube_config_path)
        config["server"] = f"https://{cluster.control_hosts[0].address}:6443"
        status, _ = kube.request(config, "GET", "/version")
    except kube.KubeError:
        return None
    return config if status == 200 else None


def apply(config: dict, path: str, obj: dict, manager: str = "rke") -> None:
    """Server-side apply of `obj` at `path` (force), as the add-on jobs' kubectl would."""
    status, body = kube.request(
        config,
        "PATCH",
        f"{path}?fieldManager={manager}&force=true",
        obj,
        content_type="application/apply-patch+yaml",
    )
    if status >= 300:
        raise RkeError(f"[lab] apply {path}: {json.loads(body).get('message', status)}")


def save_full_state(config: dict, payload: str) -> None:
    """cluster.SaveFullStateToK8s: update or create the Secret, drop the old ConfigMap."""
    import base64

    base = "/api/v1/namespaces/kube-system"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "full-cluster-state", "namespace": "kube-system"},
        "type": "Opaque",
        "data": {"full-cluster-state": base64.b64encode(payload.encode()).decode()},
    }
    status, _ = kube.request(config, "PUT", f"{base}/secrets/full-cluster-state", secret)
    if status == 404:
        status, _ = kube.request(config, "POST", f"{base}/secrets", secret)
    if status >= 300:
        raise RkeError(f"[state] error updating secret: the server returned status {status}")
    kube.request(config, "DELETE", f"{base}/configmaps/full-cluster-state")


def delete_node(config: dict, name: str) -> bool:
    """Cordon node `name`, then delete it; False if there is no such node."""
    status, _ = kube.request(config, "GET", f"/api/v1/nodes/{name}")
    if status == 404:
        return False
    patch = {"spec": {"unschedulable": True}}
    kube.request(
        config, "PATCH", f"/api/v1/nodes/{name}", patch, content_type="application/merge-patch+json"
    )
    status, body = kube.request(config, "DELETE", f"/api/v1/nodes/{name}")
    if status >= 300 and status != 404:
        raise RkeError(f"Failed to delete node [{name}]: {json.loads(body).get('message', status)}")
    return True


def sync_nodes(config: dict, cluster) -> None:
    """Kubelet registers each node; rke's sync sets role labels, user labels and taints."""
    version = cluster.config.get("kubernetes_version", "").split("-")[0]
    for host in cluster.all_hosts:
        labels = {
            "kubernetes.io/hostname": host.hostname_override,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **dict(host.node.get("labels") or {}),
        }
        for flag, role in (
            (host.is_etcd, "etcd"),
            (host.is_control, "controlplane"),
            (host.is_worker, "worker"),
        ):
            if flag:
                labels[f"node-role.kubernetes.io/{role}"] = "true"
        taints = [
            {k: v for k, v in t.items() if k in ("key", "value", "effect") and v != ""}
            for t in host.node.get("taints") or []
        ]
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": host.hostname_override, "labels": labels},
            "spec": {"taints": taints} if taints else {},
        }
        apply(config, f"/api/v1/nodes/{host.hostname_override}", node)
        status = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": host.hostname_override},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": host.internal_address},
                    {"type": "Hostname", "address": host.hostname_override},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                    }
                ],
                "nodeInfo": {
                    "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, host.address).hex,
                    "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, host.address)),
                    "bootID": str(uuid.uuid5(uuid.NAMESPACE_OID, host.address)),
                    "kernelVersion": "6.1.0-lab",
                    "osImage": "Lab Linux",
                    "kubeletVersion": version,
                    "kubeProxyVersion": version,
                    "containerRuntimeVersion": f"docker://{host.docker_version}",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        kube.request(
            config,
            "PATCH",
            f"/api/v1/nodes/{host.hostname_override}/status",
            status,
            content_type="application/merge-patch+json",
        )


NETWORK = {
    "canal": [("DaemonSet", "canal", "k8s-app")],
    "flannel": [("DaemonSet", "kube-flannel", "app")],
    "calico": [
        ("DaemonSet", "calico-node", "k8s-app"),
        ("Deployment", "calico-kube-controllers", "k8s-app"),
    ],
    "weave": [("DaemonSet", "weave-net", "name")],
}


def _workload(kind: str, name: str, namespace: str, label: str, image: str) -> dict:
    labels = {label: name}
    spec = {
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": name, "image": image}]},
        },
    }
    if kind == "Deployment":
        spec["replicas"] = 1
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }


def deploy_addons(config: dict, cluster) -> None:
    """The add-on jobs' effect: the workloads of the network plugin, DNS, metrics, ingress."""
    rke = cluster.config
    wanted: list[tuple[str, str, str, str, str]] = []
    for kind, name, label in NETWORK.get(rke["network"]["plugin"], []):
        wanted.append((kind, name, "kube-system", label, "network"))
    if rke["dns"].get("provider") == "coredns":
        wanted += [
            ("Deployment", "coredns", "kube-system", "k8s-app", "coredns"),
            ("Deployment", "coredns-autoscaler", "kube-system", "k8s-app", "coredns"),
        ]
    elif rke["dns"].get("provider") == "kube-dns":
        wanted.append(("Deployment", "kube-dns", "kube-system", "k8s-app", "kubedns"))
    if rke["monitoring"].get("provider") != "none":
        wanted.append(("Deployment", "metrics-server", "kube-system", "k8s-app", "metrics_server"))
    if rke["ingress"].get("provider") != "none":
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ingress-nginx"}}
        apply(config, "/api/v1/namespaces/ingress-nginx", namespace)
        wanted.append(("DaemonSet", "nginx-ingress-controller", "ingress-nginx", "app", "ingress"))
    images = cluster.images
    for kind, name, namespace, label, image_key in wanted:
        image = images.get(image_key, "") or images.get("kubernetes", "")
        plural = kind.lower() + "s"
        apply(
            config,
            f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}",
            _workload(kind, name, namespace, label, image),
        )
