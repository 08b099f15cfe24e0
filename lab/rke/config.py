"""cluster.yml → rke's Cluster object: defaults, host classification and validation, in rke's order.

InitClusterObject (cluster/cluster.go): setClusterDefaults, setNetworkOptions, setCloudProvider,
InvertIndexHosts (`Failed to classify hosts from config file: ...`), ValidateCluster
(`Failed to validate cluster: ...`). Only rke's rules: an even etcd count, no worker or no
controlplane are accepted here (the etcd count is checked after SSH, in TunnelHosts).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from dataclasses import dataclass, field

from lab.rke import metadata
from lab.rke.errors import RkeError

ETCD, CONTROL, WORKER = "etcd", "controlplane", "worker"


# --- paths (cluster/state.go, pki/util.go) ---------------------------------------------------
def _split(config_path: str) -> tuple[str, str]:
    path = config_path or "cluster.yml"
    base_dir = os.path.dirname(path) or "."
    base = os.path.basename(path)
    return base_dir, base


def state_file_path(config_path: str) -> str:
    base_dir, base = _split(config_path)
    full = f"{base_dir}/{base}"
    ext = os.path.splitext(base)[1]
    return (full[: -len(ext)] if ext else full) + ".rkestate"


def kube_config_path(config_path: str) -> str:
    base_dir, base = _split(config_path)
    return f"{base_dir}/kube_config_{base}"


def cert_dir_path(config_path: str) -> str:
    return state_file_path(config_path)[: -len(".rkestate")] + "_certs"


# --- semver helpers ---------------------------------------------------------------------------
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def parse_version(version: str) -> tuple[int, int, int] | None:
    """blang/semver.Parse of `version[1:]` (rke's getClusterVersion); None when invalid."""
    if len(version) <= 1 or not version.startswith("v"):
        return None
    match = _SEMVER.match(version[1:])
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def cluster_version(version: str) -> tuple[int, int, int]:
    if len(version) <= 1 or not version.startswith("v"):
        raise RkeError(f"{version} is not valid version")
    parsed = parse_version(version)
    if parsed is None:
        raise RkeError(f"{version} is not valid semver")
    return parsed


# --- hosts ------------------------------------------------------------------------------------
@dataclass
class Host:
    node: dict
    is_etcd: bool = False
    is_control: bool = False
    is_worker: bool = False
    ignore_docker_version: bool = False
    docker_version: str = ""
    conn: object = None  # hosts.Tunnel once TunnelHosts reached it

    @property
    def address(self) -> str:
        return self.node.get("address", "")

    @property
    def port(self) -> str:
        return self.node.get("port", "22")

    @property
    def user(self) -> str:
        return self.node.get("user", "")

    @property
    def internal_address(self) -> str:
        return self.node.get("internal_address", "") or self.address

    @property
    def hostname_override(self) -> str:
        return self.node.get("hostname_override", "") or self.address


def unique_hosts(*groups: list[Host]) -> list[Host]:
    seen: set[str] = set()
    out = []
    for group in groups:
        for host in group:
            if host.address not in seen:
                seen.add(host.address)
                out.append(host)
    return out


@dataclass
class Cluster:
    config: dict
    config_path: str
    etcd_hosts: list[Host] = field(default_factory=list)
    control_hosts: list[Host] = field(default_factory=list)
    worker_hosts: list[Host] = field(default_factory=list)
    inactive_hosts: list[Host] = field(default_factory=list)
    certificates: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.config.get("kubernetes_version", "")

    @property
    def cluster_name(self) -> str:
        return self.config.get("cluster_name", "local")

    @property
    def state_file_path(self) -> str:
        return state_file_path(self.config_path)

    @property
    def kube_config_path(self) -> str:
        return kube_config_path(self.config_path)

    @property
    def images(self) -> dict:
        return self.config.get("system_images", {})

    @property
    def all_hosts(self) -> list[Host]:
        return unique_hosts(self.etcd_hosts, self.control_hosts, self.worker_hosts)

    def remove_inactive(self) -> None:
        for host in self.inactive_hosts:
            for group in (self.etcd_hosts, self.control_hosts, self.worker_hosts):
                group[:] = [h for h in group if h.address != host.address]
            self.config["nodes"] = [
                n for n in self.config.get("nodes", []) if n.get("address") != host.address
            ]


# --- defaults (cluster/defaults.go:setClusterDefaults) ---------------------------------------
def _get(config: dict, *path: str) -> dict:
    cur = config
    for key in path:
        if not isinstance(cur.get(key), dict):
            cur[key] = {}
        cur = cur[key]
    return cur


def set_defaults(config: dict) -> None:
    if not config.get("ssh_key_path"):
        config["ssh_key_path"] = "~/.ssh/id_rsa"
    if not config.get("prefix_path"):
        config["prefix_path"] = "/"
    agent = bool(config.get("ssh_agent_auth", False))
    bastion = config.get("bastion_host") or {}
    if bastion.get("address"):
        if not bastion.get("port"):
            bastion["port"] = "22"
        if not bastion.get("ssh_key_path"):
            bastion["ssh_key_path"] = config["ssh_key_path"]
        bastion["ssh_agent_auth"] = agent
    for node in config.get("nodes") or []:
        if not node.get("internal_address"):
            node["internal_address"] = node.get("address", "")
        if not node.get("hostname_override"):
            node["hostname_override"] = node.get("address", "")
        if not node.get("ssh_key_path"):
            node["ssh_key_path"] = config["ssh_key_path"]
        if not node.get("port"):
            node["port"] = "22"
        node["hostname_override"] = node["hostname_override"].lower()
        node["ssh_agent_auth"] = agent
    if not _get(config, "authorization").get("mode"):
        config["authorization"]["mode"] = "rbac"
    if not _get(config, "ingress").get("provider"):
        config["ingress"]["provider"] = "nginx"
    if not config.get("cluster_name"):
        config["cluster_name"] = "local"
    if not config.get("kubernetes_version"):
        config["kubernetes_version"] = metadata.DEFAULT_K8S_VERSION
    if not config.get("addon_job_timeout"):
        config["addon_job_timeout"] = 45
    if not _get(config, "monitoring").get("provider"):
        config["monitoring"]["provider"] = "metrics-server"
    for registry in config.get("private_registries") or []:
        if not registry.get("url"):
            registry["url"] = "docker.io"
    version = config["kubernetes_version"]
    images = metadata.system_images(version)
    if images is not None:
        current = _get(config, "system_images")
        for key, value in images.items():
            if not current.get(key):
                current[key] = value
    parsed = cluster_version(version)  # setCRIDockerd
    if parsed >= (1, 24, 0) and config.get("enable_cri_dockerd") is None:
        config["enable_cri_dockerd"] = True
    dns = config.get("dns") or {}
    if not dns.get("provider"):
        dns["provider"] = "coredns" if parsed >= (1, 14, 0) else "kube-dns"
        dns.setdefault("options", {})
        config["dns"] = dns
    _services_defaults(config, parsed)
    network = _get(config, "network")
    if not network.get("plugin"):
        network["plugin"] = "canal"
    options = network.setdefault("options", {}) or {}
    network["options"] = options
    plugin_defaults = {
        "calico": {
            "calico_cloud_provider": "none",
            "calico_flex_volume_plugin_dir": _FLEXVOL,
        },
        "flannel": {
            "flannel_backend_type": "vxlan",
            "flannel_backend_port": "8472",
            "flannel_backend_vni": "1",
        },
        "canal": {
            "canal_flannel_backend_type": "vxlan",
            "canal_flannel_backend_port": "8472",
            "canal_flannel_backend_vni": "1",
            "canal_flex_volume_plugin_dir": _FLEXVOL,
        },
    }.get(network["plugin"], {})
    for key, value in plugin_defaults.items():
        options.setdefault(key, value)
    authn = _get(config, "authentication")
    if not authn.get("strategy"):
        authn["strategy"] = "x509"
    if "webhook" in authn.get("strategy", "").lower() and authn.get("webhook") is None:
        authn["webhook"] = {}
    if authn.get("webhook") is not None:
        authn["webhook"].setdefault("cache_timeout", "5s")
    _upgrade_defaults(config)
    _addons_defaults(config, parsed)


_FLEXVOL = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/nodeagent~uds"


def _services_defaults(config: dict, parsed: tuple[int, int, int]) -> None:
    services = _get(config, "services")
    images = config.get("system_images", {})
    for name in ("kube-api", "scheduler", "kube-controller", "kubelet", "kubeproxy"):
        _get(services, name)["image"] = images.get("kubernetes", "")
    etcd = _get(services, "etcd")
    etcd["image"] = images.get("etcd", "")
    if etcd.get("snapshot") is None:
        etcd["snapshot"] = True
    api, controller, kubelet = (
        services["kube-api"],
        services["kube-controller"],
        services["kubelet"],
    )
    for target, key, value in (
        (api, "service_cluster_ip_range", "10.43.0.0/16"),
        (api, "service_node_port_range", "30000-32767"),
        (controller, "service_cluster_ip_range", "10.43.0.0/16"),
        (controller, "cluster_cidr", "10.42.0.0/16"),
        (kubelet, "cluster_dns_server", "10.43.0.10"),
        (kubelet, "cluster_domain", "cluster.local"),
        (kubelet, "infra_container_image", images.get("pod_infra_container", "")),
        (etcd, "creation", "12h"),
        (etcd, "retention", "72h"),
    ):
        if not target.get(key):
            target[key] = value
    args = etcd.get("extra_args") or {}
    args.setdefault("election-timeout", "5000")
    args.setdefault("heartbeat-interval", "500")
    etcd["extra_args"] = args
    backup = etcd.get("backup_config")
    if backup is not None and backup.get("enabled") in (None, True):
        backup["interval_hours"] = backup.get("interval_hours") or 12
        backup["retention"] = backup.get("retention") or 6
        backup["timeout"] = backup.get("timeout") or 300
    custom_admission = "admission-control-config-file" in (api.get("extra_args") or {})
    if parsed >= (1, 23, 0) and not api.get("pod_security_configuration") and not custom_admission:
        api["pod_security_configuration"] = "privileged"
    if parsed >= (1, 17, 4) and api.get("audit_log") is None:
        api["audit_log"] = {"enabled": True}
    audit = api.get("audit_log")
    if isinstance(audit, dict) and audit.get("enabled"):
        policy = {
            "kind": "Policy",
            "apiVersion": "audit.k8s.io/v1",
            "rules": [{"level": "Metadata"}],
        }
        if not audit.get("configuration"):
            audit["configuration"] = {
                "max_age": 30,
                "max_backup": 10,
                "max_size": 100,
                "path": "/var/log/kube-audit/audit-log.json",
                "format": "json",
                "policy": policy,
            }
        elif not audit["configuration"].get("policy"):
            audit["configuration"]["policy"] = policy


def _upgrade_defaults(config: dict) -> None:
    strategy = config.get("upgrade_strategy")
    if strategy is None:
        config["upgrade_strategy"] = {
            "max_unavailable_worker": "10%",
            "max_unavailable_controlplane": "1",
        }
        return
    strategy["max_unavailable_worker"] = strategy.get("max_unavailable_worker") or "10%"
    strategy["max_unavailable_controlplane"] = strategy.get("max_unavailable_controlplane") or "1"
    if strategy.get("drain"):
        return
    if strategy.get("node_drain_input") is None:
        strategy["node_drain_input"] = {
            "ignore_daemonsets": True,
            "timeout": 120,
            "grace_period": -1,
        }


_DAEMONSET = {"strategy": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
_DEPLOYMENT = {
    "strategy": "RollingUpdate",
    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
}


def _addons_defaults(config: dict, parsed: tuple[int, int, int]) -> None:
    ingress, network, monitoring = config["ingress"], config["network"], config["monitoring"]
    dns = config["dns"]
    for target in (ingress, network):
        if not target.get("update_strategy"):
            target["update_strategy"] = copy.deepcopy(_DAEMONSET)
    if not dns.get("update_strategy"):
        if dns.get("provider") == "coredns":
            dns["update_strategy"] = {
                "strategy": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
            }
        elif dns.get("provider") == "kube-dns":
            dns["update_strategy"] = {
                "strategy": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "10%"},
            }
    if dns.get("linear_autoscaler_params") is None:
        dns["linear_autoscaler_params"] = {
            "coresPerReplica": 128,
            "nodesPerReplica": 4,
            "min": 1,
            "preventSinglePointFailure": True,
        }
    if not monitoring.get("update_strategy"):
        monitoring["update_strategy"] = copy.deepcopy(_DEPLOYMENT)
    if monitoring.get("replicas") is None:
        monitoring["replicas"] = 1
    modern = parsed >= (1, 21, 0)
    if not ingress.get("network_mode"):
        ingress["network_mode"] = "hostPort" if modern else "hostNetwork"
    ingress["http_port"] = ingress.get("http_port") or 80
    ingress["https_port"] = ingress.get("https_port") or 443
    if ingress.get("default_backend") is None:
        ingress["default_backend"] = not modern
    if ingress.get("default_ingress_class") is None:
        ingress["default_ingress_class"] = True


# --- InvertIndexHosts and ValidateCluster ----------------------------------------------------
def invert_index_hosts(cluster: Cluster) -> None:
    cluster.etcd_hosts, cluster.control_hosts, cluster.worker_hosts = [], [], []
    ignore = bool(cluster.config.get("ignore_docker_version"))
    for node in cluster.config.get("nodes") or []:
        host = Host(node=node, ignore_docker_version=ignore)
        for role in node.get("role") or []:
            if role == ETCD:
                host.is_etcd = True
                cluster.etcd_hosts.append(host)
            elif role == CONTROL:
                host.is_control = True
                cluster.control_hosts.append(host)
            elif role == WORKER:
                host.is_worker = True
                cluster.worker_hosts.append(host)
            else:
                raise RkeError(f"Failed to recognize host [{node.get('address', '')}] role {role}")


_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def dns1123_subdomain_errors(value: str) -> list[str]:
    """k8s.io/apimachinery validation.IsDNS1123Subdomain messages."""
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        errors.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
    return errors


def validate(cluster: Cluster) -> None:
    config = cluster.config
    version = cluster.version
    # validateVersion
    if parse_version(version) is None:
        raise RkeError(f"{version} is not valid semver")
    if version not in metadata.ACCEPTED:
        missing = _missing_image(config)
        if missing:
            raise RkeError(
                f"{version} is an unsupported Kubernetes version and system images are not "
                f"populated: {missing}"
            )
    # validateDuplicateNodes
    addresses, hostnames = set(), set()
    for node in config.get("nodes") or []:
        if node.get("address", "") in addresses:
            raise RkeError(f"Cluster can't have duplicate node: {node.get('address', '')}")
        addresses.add(node.get("address", ""))
        if node.get("hostname_override", "") in hostnames:
            raise RkeError(
                f"Cluster can't have duplicate node: {node.get('hostname_override', '')}"
            )
        hostnames.add(node.get("hostname_override", ""))
    # validateHostsOptions
    for i, node in enumerate(config.get("nodes") or [], start=1):
        if not node.get("address"):
            raise RkeError(f"Address for host ({i}) is not provided")
        if not node.get("user"):
            raise RkeError(f"User for host ({i}) is not provided")
        if not node.get("role"):
            raise RkeError(f"Role for host ({i}) is not provided")
        errors = dns1123_subdomain_errors(node.get("hostname_override", ""))
        if errors:
            raise RkeError(
                f"Hostname_override [{node.get('hostname_override', '')}] for host ({i}) is not "
                f"valid: [{' '.join(errors)}]"
            )
        for role in node["role"]:
            if role not in (ETCD, CONTROL, WORKER):
                raise RkeError(f"Role [{role}] for host ({i}) is not recognized")
    # validateAuthOptions
    strategies = [
        s.strip().lower() for s in config["authentication"]["strategy"].split("|") if s.strip()
    ]
    for strategy in strategies:
        if strategy not in ("x509", "webhook"):
            raise RkeError(f"Authentication strategy [{strategy}] is not supported")
    if "x509" not in strategies:
        raise RkeError("Authentication strategy must contain [x509]")
    # validateNetworkOptions
    network = config["network"]
    plugin = network.get("plugin", "")
    if plugin not in ("none", "flannel", "calico", "canal", "weave", "aci"):
        raise RkeError(f"Network plugin [{plugin}] is not supported")
    if plugin == "flannel" and network.get("mtu"):
        raise RkeError("Network plugin [flannel] does not support configuring MTU")
    parsed = parse_version(version)
    if plugin == "weave" and parsed >= (1, 30, 0):
        from lab.rke.logrus import log

        log.error("weave CNI support is removed for k8s version >=1.30.0")
        raise RkeError("weave CNI support is removed for k8s version >=1.30.0")
    if plugin == "weave" and parsed >= (1, 27, 0):
        from lab.rke.logrus import log

        log.warning(
            "Weave CNI plugin is deprecated starting with Kubernetes v1.27 and will be removed "
            "in Kubernetes v1.30"
        )
    services = config["services"]
    dual = (
        len(services["kube-api"]["service_cluster_ip_range"].split(",")) > 1
        or len(services["kube-controller"]["cluster_cidr"].split(",")) > 1
    )
    if dual and plugin not in ("calico", "aci"):
        raise RkeError(f"Network plugin [{plugin}] does not support IPv6 (dualstack)")
    # validateIngressOptions
    ingress = config["ingress"]
    if ingress.get("provider") not in ("nginx", "none"):
        raise RkeError(f"Ingress controller {ingress.get('provider')} is incorrect")
    policy = ingress.get("dns_policy", "")
    if policy and policy not in ("ClusterFirst", "ClusterFirstWithHostNet", "None", "Default"):
        raise RkeError(f"DNSPolicy {policy} was not a valid DNS Policy")
    mode = ingress.get("network_mode", "")
    if mode == "hostPort":
        if not 0 <= ingress.get("https_port", 0) <= 65535:
            raise RkeError("https port is invalid. Needs to be within 0 to 65535")
        if not 0 <= ingress.get("http_port", 0) <= 65535:
            raise RkeError("http port is invalid. Needs to be within 0 to 65535")
        if ingress.get("http_port") and ingress.get("http_port") == ingress.get("https_port"):
            raise RkeError("http and https ports need to be different")
    if mode not in ("", "hostNetwork", "hostPort", "none"):
        raise RkeError(f"NetworkMode {mode} was not a valid network mode")
    # validateCRIDockerdOption
    if config.get("enable_cri_dockerd") and parsed < (1, 21, 0):
        raise RkeError(f"Enabling cri-dockerd for cluster version [{version}] is not supported")
    # validatePodSecurity
    level = services["kube-api"].get("pod_security_configuration", "")
    if level:
        if config["authorization"].get("mode") != "rbac":
            raise RkeError("PodSecurity can't be enabled with RBAC support disabled")
        if parsed < (1, 23, 0):
            raise RkeError("cluster version must be at least v1.23 to use PodSecurity in RKE")
        if level not in ("privileged", "restricted"):
            raise RkeError(
                f"invalid pod_security_configuration [{level}]. Supported values: "
                "[privileged, restricted]"
            )
    # validateServicesOptions
    etcd = services["etcd"]
    if etcd.get("external_urls"):
        for key, text in (
            ("ca_cert", "External CA Certificate for etcd can't be empty"),
            ("cert", "External Client Certificate for etcd can't be empty"),
            ("key", "External Client Key for etcd can't be empty"),
            ("path", "External etcd path can't be empty"),
        ):
            if not etcd.get(key):
                raise RkeError(text)
    backup = etcd.get("backup_config") or {}
    s3 = backup.get("s3backupconfig")
    if s3 is not None:
        if not s3.get("endpoint"):
            raise RkeError("etcd s3 backup backend endpoint can't be empty")
        if not s3.get("bucket_name"):
            raise RkeError("etcd s3 backup backend bucketName can't be empty")


def _missing_image(config: dict) -> str:
    images = config.get("system_images") or {}
    network = config["network"].get("plugin")
    checks = [
        ("etcd", "etcd image is not populated"),
        ("kubernetes", "kubernetes image is not populated"),
        ("pod_infra_container", "pod infrastructure container image is not populated"),
        ("alpine", "alpine image is not populated"),
        ("nginx_proxy", "nginx proxy image is not populated"),
        ("cert_downloader", "certificate downloader image is not populated"),
        ("kubernetes_services_sidecar", "kubernetes sidecar image is not populated"),
    ]
    checks += {
        "flannel": [
            ("flannel", "flannel image is not populated"),
            ("flannel_cni", "flannel cni image is not populated"),
        ],
        "canal": [
            ("canal_node", "canal image is not populated"),
            ("canal_cni", "canal cni image is not populated"),
            ("canal_flannel", "flannel image is not populated"),
        ],
        "calico": [
            ("calico_cni", "calico cni image is not populated"),
            ("calico_ctl", "calico ctl image is not populated"),
            ("calico_node", "calico image is not populated"),
            ("calico_controllers", "calico controllers image is not populated"),
        ],
        "weave": [
            ("weave_cni", "weave cni image is not populated"),
            ("weave_node", "weave image is not populated"),
        ],
    }.get(network, [])
    dns = config["dns"].get("provider")
    if dns == "coredns":
        checks += [
            ("coredns", "coredns image is not populated"),
            ("coredns_autoscaler", "coredns autoscaler image is not populated"),
        ]
    if config["monitoring"].get("provider") != "none":
        checks.append(("metrics_server", "metrics server images is not populated"))
    if config["ingress"].get("provider") != "none":
        checks += [
            ("ingress", "ingress image is not populated"),
            ("ingress_backend", "ingress backend image is not populated"),
        ]
        if (parse_version(config["kubernetes_version"]) or (0, 0, 0)) >= (1, 21, 0):
            checks.append(("ingress_webhook", "ingress webhook image is not populated"))
    for key, text in checks:
        if not images.get(key):
            return text
    return ""


def init_cluster_object(config: dict, config_path: str) -> Cluster:
    """rke's InitClusterObject on a copy of `config` (YAML-named, as parsed)."""
    cluster = Cluster(config=copy.deepcopy(config), config_path=config_path or "cluster.yml")
    set_defaults(cluster.config)
    try:
        for cidr in cluster.config["services"]["kube-api"]["service_cluster_ip_range"].split(","):
            ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise RkeError(
            "Failed to set network options: Failed to get Kubernetes Service IP: Failed to get "
            f"kubernetes service IP from Kube API option [service_cluster_ip_range]: invalid CIDR "
            f"address: {exc}"
        ) from None
    try:
        invert_index_hosts(cluster)
    except RkeError as exc:
        raise RkeError(f"Failed to classify hosts from config file: {exc}") from None
    try:
        validate(cluster)
    except RkeError as exc:
        raise RkeError(f"Failed to validate cluster: {exc}") from None
    return cluster
