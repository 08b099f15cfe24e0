"""Kubernetes metadata that rke v1.6.3 embeds (KDM `release-v2.9` at the v1.6.3 generation commit).

Facts, not code: which `kubernetes_version` values `rke up` accepts, the default and "current"
versions, the system images of each version and the Docker versions each Kubernetes minor allows.

- Accepted set: the 302 keys of rke's `K8sVersionToRKESystemImages` (v1.8.11 ... v1.30.5).
- `rke config --list-version` prints the default; `--all` prints the newest patch of every minor
  whose `MaxRKEVersion` is not below v1.6.3 (the four versions of `CURRENT`).
- System images are exact for the four current versions. For every other accepted version the
  lab derives them from the closest current version with that version's hyperkube image
  (an approximation: rke keeps an image set per version; the lab does not model older ones).
"""

from __future__ import annotations

RKE_VERSION = "v1.6.3"
DEFAULT_K8S_VERSION = "v1.30.5-rancher1-1"
CURRENT = ("v1.27.16-rancher1-1", "v1.28.14-rancher1-1", "v1.29.9-rancher1-1", "v1.30.5-rancher1-1")

# minor -> patch suffixes accepted by `rke up` (rke's K8sVersionToRKESystemImages keys).
_ACCEPTED = """
8 11-rancher2-1
9 5-rancher1-1 7-rancher2-1 7-rancher2-2
10 0-rancher1-1 1-rancher2-1 3-rancher2-1 5-rancher1-1 5-rancher1-2 11-rancher1-1 12-rancher1-1
11 1-rancher1-1 2-rancher1-1 2-rancher1-2 3-rancher1-1 5-rancher1-1 6-rancher1-1 8-rancher1-1
11 9-rancher1-1 9-rancher1-2 9-rancher1-3
12 0-rancher1-1 1-rancher1-1 3-rancher1-1 4-rancher1-1 5-rancher1-1 5-rancher1-2 6-rancher1-1
12 6-rancher1-2 7-rancher1-1 7-rancher1-2 7-rancher1-3 7-rancher1-4 9-rancher1-1 10-rancher1-1
12 10-rancher1-2
13 1-rancher1-1 1-rancher1-2 4-rancher1-1 4-rancher1-2 5-rancher1-1 5-rancher1-2 5-rancher1-3
13 7-rancher1-1 9-rancher1-1 9-rancher1-2 10-rancher1-1 10-rancher1-2 11-rancher1-1 12-rancher1-1
13 12-rancher2-1
14 1-rancher1-1 1-rancher1-2 3-rancher1-1 5-rancher1-1 6-rancher1-1 7-rancher1-1 8-rancher1-1
14 8-rancher2-1 9-rancher1-1 9-rancher1-2 10-rancher1-0 10-rancher1-1
15 0-rancher1-1 2-rancher1-1 3-rancher1-1 4-rancher1-1 4-rancher1-2 5-rancher1-1 5-rancher1-2
15 5-rancher2-2 6-rancher1-2 7-rancher1-1 9-rancher1-1 10-rancher1-1 11-rancher1-0 11-rancher1-1
15 11-rancher1-2 11-rancher1-3 12-rancher1-1 12-rancher2-2 12-rancher2-3 12-rancher2-4
15 12-rancher2-5 12-rancher2-6 12-rancher2-7 12-rancher2-8
16 1-rancher1-1 2-rancher1-1 2-rancher2-1 3-rancher1-1 4-rancher1-1 6-rancher1-1 6-rancher1-2
16 7-rancher1-1 8-rancher1-1 8-rancher1-2 9-rancher1-1 10-rancher2-1 10-rancher2-2 13-rancher1-1
16 13-rancher1-2 14-rancher1-1 15-rancher1-1 15-rancher1-2 15-rancher1-3 15-rancher1-4
17 0-rancher1-1 0-rancher1-2 2-rancher1-1 2-rancher1-2 3-rancher1-1 4-rancher1-1 4-rancher1-2
17 5-rancher1-1 6-rancher2-1 6-rancher2-2 9-rancher1-1 9-rancher1-2 11-rancher1-1 12-rancher1-1
17 13-rancher1-1 13-rancher1-2 14-rancher1-1 16-rancher1-1 16-rancher1-2 16-rancher1-3
17 17-rancher1-1 17-rancher1-2 17-rancher1-3 17-rancher2-1 17-rancher2-2 17-rancher2-3
17 17-rancher2-4
18 3-rancher2-1 3-rancher2-2 6-rancher1-1 6-rancher1-2 8-rancher1-1 9-rancher1-1 10-rancher1-1
18 10-rancher1-2 12-rancher1-1 14-rancher1-1 14-rancher1-2 14-rancher1-3 15-rancher1-1
18 15-rancher1-2 15-rancher1-3 16-rancher1-1 16-rancher1-2 16-rancher1-3 17-rancher1-1
18 17-rancher1-2 17-rancher1-3 18-rancher1-1 18-rancher1-2 20-rancher1-1 20-rancher1-2
18 20-rancher1-3
19 2-rancher1-1 3-rancher1-1 3-rancher1-2 4-rancher1-1 6-rancher1-1 7-rancher1-1 8-rancher1-1
19 9-rancher1-1 10-rancher1-1 12-rancher1-1 13-rancher1-1 14-rancher1-1 14-rancher1-2
19 15-rancher1-1 15-rancher1-2 16-rancher1-1 16-rancher1-2 16-rancher1-3 16-rancher1-4
19 16-rancher1-5 16-rancher1-6 16-rancher2-1
20 4-rancher1-1 5-rancher1-1 6-rancher1-1 8-rancher1-1 9-rancher1-1 10-rancher1-1 10-rancher1-2
20 11-rancher1-1 11-rancher1-2 12-rancher1-1 12-rancher1-2 13-rancher1-1 14-rancher1-1
20 14-rancher2-1 15-rancher1-1 15-rancher1-2 15-rancher1-3 15-rancher1-4 15-rancher2-1
20 15-rancher2-2
21 4-rancher1-1 5-rancher1-1 6-rancher1-1 6-rancher1-2 7-rancher1-1 8-rancher1-1 8-rancher2-1
21 9-rancher1-1 9-rancher1-2 10-rancher1-1 12-rancher1-1 13-rancher1-1 14-rancher1-1
22 4-rancher1-1 5-rancher1-1 5-rancher2-1 6-rancher1-1 7-rancher1-1 7-rancher1-2 9-rancher1-1
22 10-rancher1-1 11-rancher1-1 13-rancher1-1 15-rancher1-1 16-rancher1-1 17-rancher1-1
22 17-rancher1-2
23 4-rancher1-1 4-rancher1-2 6-rancher1-1 7-rancher1-1 8-rancher1-1 10-rancher1-1 12-rancher1-1
23 14-rancher1-1 15-rancher1-1 16-rancher2-1 16-rancher2-2 16-rancher2-3
24 2-rancher1-1 4-rancher1-1 6-rancher1-1 8-rancher1-1 9-rancher1-1 10-rancher2-1 10-rancher4-1
24 13-rancher2-1 13-rancher2-2 15-rancher1-1 16-rancher1-1 17-rancher1-1
25 6-rancher2-1 6-rancher4-1 9-rancher2-1 9-rancher2-2 11-rancher1-1 12-rancher1-1 13-rancher1-1
25 14-rancher1-1 16-rancher2-1 16-rancher2-2 16-rancher2-3
26 4-rancher2-1 6-rancher1-1 7-rancher1-1 8-rancher1-1 9-rancher1-1 11-rancher2-1 11-rancher2-2
26 13-rancher1-1 13-rancher1-2 14-rancher1-1 15-rancher1-1
27 6-rancher1-1 8-rancher2-1 8-rancher2-2 10-rancher1-1 10-rancher1-2 11-rancher1-1 12-rancher1-1
27 13-rancher1-1 14-rancher1-1 15-rancher1-1 16-rancher1-1
28 7-rancher1-1 8-rancher1-1 9-rancher1-1 10-rancher1-1 11-rancher1-1 12-rancher1-1 13-rancher1-1
28 14-rancher1-1
29 6-rancher1-1 7-rancher1-1 8-rancher1-1 9-rancher1-1
30 2-rancher1-1 3-rancher1-1 4-rancher1-1 5-rancher1-1
"""


def _accepted() -> frozenset[str]:
    out = set()
    for line in _ACCEPTED.strip().splitlines():
        minor, *patches = line.split()
        out.update(f"v1.{minor}.{p}" for p in patches)
    return frozenset(out)


ACCEPTED = _accepted()

# KDM pkg/rke/k8s_docker_info.go: Docker versions (major.minor) allowed per Kubernetes minor.
_OLD = ("1.13.x", "17.03.x", "17.06.x", "17.09.x", "18.06.x", "18.09.x", "19.03.x", "20.10.x")
_NEW = ("23.0.x", "24.0.x", "25.0.x", "26.0.x", "26.1.x", "27.0.x", "27.1.x", "27.2.x")
_PRE = ("1.11.x", "1.12.x", "1.13.x", "17.03.x")
_MID = ("18.06.x", "18.09.x", "19.03.x", "20.10.x")
DOCKER_VERSIONS: dict[str, tuple[str, ...]] = {
    "1.8": _PRE,
    "1.9": _PRE + _MID,
    "1.10": _PRE + _MID,
    "1.11": _PRE + _MID,
    "1.12": ("1.11.x", "1.12.x", *_OLD),
    "1.13": ("1.11.x", "1.12.x", *_OLD),
    **{f"1.{m}": _OLD for m in range(14, 23)},
    "1.23": _OLD + _NEW[:2],
    "1.24": _OLD + _NEW[:2],
    "1.25": _OLD + _NEW[:3],
    "1.26": _OLD + _NEW[:3],
    **{f"1.{m}": _OLD + _NEW for m in range(27, 31)},
}

# Field order of rke's RKESystemImages (types/rke_types.go) with their YAML names.
IMAGE_FIELDS = (
    ("etcd", "etcd"),
    ("alpine", "alpine"),
    ("nginx_proxy", "nginxProxy"),
    ("cert_downloader", "certDownloader"),
    ("kubernetes_services_sidecar", "kubernetesServicesSidecar"),
    ("kubedns", "kubedns"),
    ("dnsmasq", "dnsmasq"),
    ("kubedns_sidecar", "kubednsSidecar"),
    ("kubedns_autoscaler", "kubednsAutoscaler"),
    ("coredns", "coredns"),
    ("coredns_autoscaler", "corednsAutoscaler"),
    ("nodelocal", "nodelocal"),
    ("kubernetes", "kubernetes"),
    ("flannel", "flannel"),
    ("flannel_cni", "flannelCni"),
    ("calico_node", "calicoNode"),
    ("calico_cni", "calicoCni"),
    ("calico_controllers", "calicoControllers"),
    ("calico_ctl", "calicoCtl"),
    ("calico_flexvol", "calicoFlexVol"),
    ("canal_node", "canalNode"),
    ("canal_cni", "canalCni"),
    ("canal_controllers", "canalControllers"),
    ("canal_flannel", "canalFlannel"),
    ("canal_flexvol", "canalFlexVol"),
    ("weave_node", "weaveNode"),
    ("weave_cni", "weaveCni"),
    ("pod_infra_container", "podInfraContainer"),
    ("ingress", "ingress"),
    ("ingress_backend", "ingressBackend"),
    ("ingress_webhook", "ingressWebhook"),
    ("metrics_server", "metricsServer"),
    ("windows_pod_infra_container", "windowsPodInfraContainer"),
    ("aci_cni_deploy_container", "aciCniDeployContainer"),
    ("aci_host_container", "aciHostContainer"),
    ("aci_opflex_container", "aciOpflexContainer"),
    ("aci_mcast_container", "aciMcastContainer"),
    ("aci_ovs_container", "aciOvsContainer"),
    ("aci_controller_container", "aciControllerContainer"),
    ("aci_gbp_server_container", "aciGbpServerContainer"),
    ("aci_opflex_server_container", "aciOpflexServerContainer"),
)


def _images(
    *,
    etcd: str,
    tools: str,
    dns: str,
    flannel: str,
    flannel_cni: str,
    calico: str,
    aci: str,
    ingress: str,
    webhook: str,
    metrics: str,
    coredns: str,
    weave: bool,
) -> dict[str, str]:
    images = {
        "etcd": f"rancher/mirrored-coreos-etcd:{etcd}",
        "alpine": f"rancher/rke-tools:{tools}",
        "nginx_proxy": f"rancher/rke-tools:{tools}",
        "cert_downloader": f"rancher/rke-tools:{tools}",
        "kubernetes_services_sidecar": f"rancher/rke-tools:{tools}",
        "kubedns": f"rancher/mirrored-k8s-dns-kube-dns:{dns}",
        "dnsmasq": f"rancher/mirrored-k8s-dns-dnsmasq-nanny:{dns}",
        "kubedns_sidecar": f"rancher/mirrored-k8s-dns-sidecar:{dns}",
        "kubedns_autoscaler": "rancher/mirrored-cluster-proportional-autoscaler:v1.8.9",
        "flannel": f"rancher/mirrored-flannel-flannel:{flannel}",
        "flannel_cni": f"rancher/flannel-cni:{flannel_cni}",
        "calico_node": f"rancher/mirrored-calico-node:{calico}",
        "calico_cni": f"rancher/calico-cni:{calico}-rancher1",
        "calico_controllers": f"rancher/mirrored-calico-kube-controllers:{calico}",
        "calico_ctl": f"rancher/mirrored-calico-ctl:{calico}",
        "calico_flexvol": f"rancher/mirrored-calico-pod2daemon-flexvol:{calico}",
        "canal_node": f"rancher/mirrored-calico-node:{calico}",
        "canal_cni": f"rancher/calico-cni:{calico}-rancher1",
        "canal_controllers": f"rancher/mirrored-calico-kube-controllers:{calico}",
        "canal_flannel": f"rancher/mirrored-flannel-flannel:{flannel}",
        "canal_flexvol": f"rancher/mirrored-calico-pod2daemon-flexvol:{calico}",
        "aci_cni_deploy_container": f"noiro/cnideploy:{aci}",
        "aci_host_container": f"noiro/aci-containers-host:{aci}",
        "aci_opflex_container": f"noiro/opflex:{aci}",
        "aci_mcast_container": f"noiro/opflex:{aci}",
        "aci_ovs_container": f"noiro/openvswitch:{aci}",
        "aci_controller_container": f"noiro/aci-containers-controller:{aci}",
        "pod_infra_container": "rancher/mirrored-pause:3.7",
        "ingress": f"rancher/nginx-ingress-controller:{ingress}",
        "ingress_backend": "rancher/mirrored-nginx-ingress-controller-defaultbackend:1.5-rancher1",
        "ingress_webhook": f"rancher/mirrored-ingress-nginx-kube-webhook-certgen:{webhook}",
        "metrics_server": f"rancher/mirrored-metrics-server:{metrics}",
        "coredns": f"rancher/mirrored-coredns-coredns:{coredns}",
        "coredns_autoscaler": "rancher/mirrored-cluster-proportional-autoscaler:v1.8.9",
        "windows_pod_infra_container": "rancher/mirrored-pause:3.7",
        "nodelocal": f"rancher/mirrored-k8s-dns-node-cache:{dns}",
    }
    if weave:
        images["weave_node"] = "weaveworks/weave-kube:2.8.1"
        images["weave_cni"] = "weaveworks/weave-npc:2.8.1"
    return images


_CURRENT_IMAGES = {
    "1.27": _images(
        etcd="v3.5.10",
        tools="v0.1.100",
        dns="1.22.28",
        flannel="v0.21.4",
        flannel_cni="v0.3.0-rancher8",
        calico="v3.26.3",
        aci="6.0.4.2.81c2369",
        ingress="nginx-1.9.4-rancher1",
        webhook="v20231011-8b53cabe0",
        metrics="v0.6.3",
        coredns="1.10.1",
        weave=True,
    ),
    "1.28": _images(
        etcd="v3.5.10",
        tools="v0.1.103",
        dns="1.22.28",
        flannel="v0.24.2",
        flannel_cni="v0.3.0-rancher9",
        calico="v3.27.4",
        aci="6.1.1.1.81c2369",
        ingress="nginx-1.11.2-rancher1",
        webhook="v20231226-1a7112e06",
        metrics="v0.7.0",
        coredns="1.10.1",
        weave=True,
    ),
    "1.29": _images(
        etcd="v3.5.12",
        tools="v0.1.103",
        dns="1.22.28",
        flannel="v0.25.1",
        flannel_cni="v1.4.1-rancher1",
        calico="v3.27.4",
        aci="6.1.1.1.81c2369",
        ingress="nginx-1.11.2-rancher1",
        webhook="v20231226-1a7112e06",
        metrics="v0.7.0",
        coredns="1.11.1",
        weave=True,
    ),
    "1.30": _images(
        etcd="v3.5.12",
        tools="v0.1.103",
        dns="1.23.0",
        flannel="v0.25.1",
        flannel_cni="v1.4.1-rancher1",
        calico="v3.28.1",
        aci="6.1.1.1.81c2369",
        ingress="nginx-1.11.2-rancher1",
        webhook="v1.4.1",
        metrics="v0.7.1",
        coredns="1.11.1",
        weave=False,
    ),
}


def minor(version: str) -> str:
    """`1.30` for `v1.30.5-rancher1-1`."""
    parts = version.lstrip("v").split(".")
    return ".".join(parts[:2])


def system_images(version: str) -> dict[str, str] | None:
    """rke's system images for an accepted version; None for a version rke does not know."""
    if version not in ACCEPTED:
        return None
    m = minor(version)
    base = _CURRENT_IMAGES.get(m) or _CURRENT_IMAGES["1.27"]
    images = dict(base)
    images["kubernetes"] = "rancher/hyperkube:" + version.rsplit("-", 1)[0]
    return images
