"""rke's RancherKubernetesEngineConfig (types/rke_types.go) as a schema.

It decodes cluster.yml the way gopkg.in/yaml.v2 does (unknown keys ignored, scalars coerced
into string fields, type errors collected as `line N: cannot unmarshal !!tag `v` into T`) and
encodes the result with the JSON tags and `omitempty` rules Go's encoding/json applies (fields
in declaration order, map keys sorted, structs never omitted, nil pointers omitted).

Deep Kubernetes types (tolerations, admission/audit configuration, update strategies, cloud
provider sub-structs) are kept as they were written ("any").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class T:
    kind: str  # str int float bool list map struct any
    go: str
    elem: T | None = None
    fields: tuple = ()


@dataclass
class F:
    yaml: str
    json: str
    type: T
    omitempty: bool = True
    ptr: bool = False
    extra: dict = field(default_factory=dict)


STR = T("str", "string")
INT = T("int", "int")
FLOAT = T("float", "float64")
BOOL = T("bool", "bool")
ANY = T("any", "interface {}")
STRLIST = T("list", "[]string", STR)
STRMAP = T("map", "map[string]string", STR)
STRLISTMAP = T("map", "map[string][]string", STRLIST)


def struct(go: str, *fields: F) -> T:
    return T("struct", "types." + go, fields=fields)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def f(yaml: str, typ: T, json: str | None = None, **kw) -> F:
    return F(yaml, json or _camel(yaml), typ, **kw)


_BASE = (
    f("image", STR),
    f("extra_args", STRMAP),
    f("extra_args_array", STRLISTMAP),
    f("extra_binds", STRLIST),
    f("extra_env", STRLIST),
    f("win_extra_args", STRMAP),
    f("win_extra_args_array", STRLISTMAP),
    f("win_extra_binds", STRLIST),
    f("win_extra_env", STRLIST),
)

S3 = struct(
    "S3BackupConfig",
    f("access_key", STR),
    f("secret_key", STR),
    f("bucket_name", STR),
    f("region", STR),
    f("endpoint", STR, omitempty=False),
    f("custom_ca", STR),
    f("folder", STR),
)
BACKUP = struct(
    "BackupConfig",
    f("enabled", BOOL, ptr=True),
    f("interval_hours", INT),
    f("retention", INT),
    f("s3backupconfig", S3, "s3BackupConfig", omitempty=False, ptr=True),
    f("safe_timestamp", BOOL),
    f("timeout", INT),
)
ETCD = struct(
    "ETCDService",
    *_BASE,
    f("external_urls", STRLIST),
    f("ca_cert", STR),
    f("cert", STR),
    f("key", STR),
    f("path", STR),
    f("uid", INT),
    f("gid", INT),
    f("snapshot", BOOL, ptr=True),
    f("retention", STR),
    f("creation", STR),
    f("backup_config", BACKUP, ptr=True),
)
KUBEAPI = struct(
    "KubeAPIService",
    *_BASE,
    f("service_cluster_ip_range", STR, "serviceClusterIpRange"),
    f("service_node_port_range", STR),
    f("pod_security_configuration", STR),
    f("always_pull_images", BOOL),
    f("secrets_encryption_config", ANY, ptr=True),
    f(
        "audit_log",
        struct(
            "AuditLog",
            f("enabled", BOOL),
            f(
                "configuration",
                struct(
                    "AuditLogConfig",
                    f("max_age", INT),
                    f("max_backup", INT),
                    f("max_size", INT),
                    f("path", STR),
                    f("format", STR),
                    f("policy", ANY, ptr=True),
                ),
                ptr=True,
            ),
        ),
        ptr=True,
    ),
    f("admission_configuration", ANY, ptr=True),
    f("event_rate_limit", ANY, ptr=True),
)
SERVICES = struct(
    "RKEConfigServices",
    f("etcd", ETCD),
    f("kube-api", KUBEAPI, "kubeApi"),
    f(
        "kube-controller",
        struct(
            "KubeControllerService",
            *_BASE,
            f("cluster_cidr", STR, "clusterCidr"),
            f("service_cluster_ip_range", STR, "serviceClusterIpRange"),
        ),
        "kubeController",
    ),
    f("scheduler", struct("SchedulerService", *_BASE)),
    f(
        "kubelet",
        struct(
            "KubeletService",
            *_BASE,
            f("cluster_domain", STR),
            f("infra_container_image", STR),
            f("cluster_dns_server", STR, "clusterDnsServer"),
            f("fail_swap_on", BOOL),
            f("generate_serving_certificate", BOOL),
        ),
    ),
    f("kubeproxy", struct("KubeproxyService", *_BASE)),
)
TAINT = struct("RKETaint", f("key", STR), f("value", STR), f("effect", T("str", "v1.TaintEffect")))
NODE = struct(
    "RKEConfigNode",
    f("nodeName", STR, "nodeName"),
    f("address", STR),
    f("port", STR),
    f("internal_address", STR),
    f("role", STRLIST),
    f("hostname_override", STR),
    f("user", STR),
    f("docker_socket", STR),
    f("ssh_agent_auth", BOOL),
    f("ssh_key", STR),
    f("ssh_key_path", STR),
    f("ssh_cert", STR),
    f("ssh_cert_path", STR),
    f("labels", STRMAP),
    f("taints", T("list", "[]types.RKETaint", TAINT)),
)


def _images() -> T:
    from lab.rke.metadata import IMAGE_FIELDS

    return struct("RKESystemImages", *(f(y, STR, j) for y, j in IMAGE_FIELDS))


RKE_CONFIG = struct(
    "RancherKubernetesEngineConfig",
    f("nodes", T("list", "[]types.RKEConfigNode", NODE)),
    f("services", SERVICES),
    f(
        "network",
        struct(
            "NetworkConfig",
            f("plugin", STR),
            f("options", STRMAP),
            f("mtu", INT),
            f("calico_network_provider", ANY, ptr=True),
            f("canal_network_provider", ANY, ptr=True),
            f("flannel_network_provider", ANY, ptr=True),
            f("weave_network_provider", ANY, ptr=True),
            f("aci_network_provider", ANY, ptr=True),
            f("node_selector", STRMAP),
            f("update_strategy", ANY, ptr=True),
            f("tolerations", ANY),
        ),
    ),
    f(
        "authentication",
        struct(
            "AuthnConfig",
            f("strategy", STR),
            f("sans", STRLIST, "sans"),
            f(
                "webhook",
                struct("AuthWebhookConfig", f("config_file", STR), f("cache_timeout", STR)),
                ptr=True,
            ),
        ),
    ),
    f("addons", STR),
    f("addons_include", STRLIST),
    f("system_images", _images()),
    f("ssh_key_path", STR),
    f("ssh_cert_path", STR),
    f("ssh_agent_auth", BOOL, omitempty=False),
    f("authorization", struct("AuthzConfig", f("mode", STR), f("options", STRMAP))),
    f("ignore_docker_version", BOOL, omitempty=False, ptr=True),
    f("enable_cri_dockerd", BOOL, "enableCriDockerd", omitempty=False, ptr=True),
    f("kubernetes_version", STR, "kubernetesVersion"),
    f(
        "private_registries",
        T(
            "list",
            "[]types.PrivateRegistry",
            struct(
                "PrivateRegistry",
                f("url", STR),
                f("user", STR),
                f("password", STR),
                f("is_default", BOOL),
                f("ecr_credential_plugin", ANY, ptr=True),
            ),
        ),
    ),
    f(
        "ingress",
        struct(
            "IngressConfig",
            f("provider", STR),
            f("options", STRMAP),
            f("node_selector", STRMAP),
            f("extra_args", STRMAP),
            f("dns_policy", STR, "dnsPolicy"),
            f("extra_envs", ANY),
            f("extra_volumes", ANY),
            f("extra_volume_mounts", ANY),
            f("update_strategy", ANY, ptr=True),
            f("http_port", INT, "httpPort"),
            f("https_port", INT, "httpsPort"),
            f("network_mode", STR),
            f("tolerations", ANY),
            f("default_backend", BOOL, ptr=True),
            f("default_http_backend_priority_class_name", STR),
            f("nginx_ingress_controller_priority_class_name", STR),
            f("default_ingress_class", BOOL, ptr=True),
        ),
    ),
    f("cluster_name", STR),
    f("cloud_provider", ANY, omitempty=True),
    f("prefix_path", STR),
    f("win_prefix_path", STR),
    f("addon_job_timeout", INT),
    f(
        "bastion_host",
        struct(
            "BastionHost",
            f("address", STR),
            f("port", STR),
            f("user", STR),
            f("ssh_agent_auth", BOOL),
            f("ssh_key", STR),
            f("ssh_key_path", STR),
            f("ssh_cert", STR),
            f("ssh_cert_path", STR),
            f("ignore_proxy_env_vars", BOOL),
        ),
    ),
    f(
        "monitoring",
        struct(
            "MonitoringConfig",
            f("provider", STR),
            f("options", STRMAP),
            f("node_selector", STRMAP),
            f("update_strategy", ANY, ptr=True),
            f("replicas", T("int", "int32"), ptr=True),
            f("tolerations", ANY),
            f("metrics_server_priority_class_name", STR),
        ),
    ),
    f("restore", struct("RestoreConfig", f("restore", BOOL), f("snapshot_name", STR))),
    f(
        "rotate_certificates",
        struct(
            "RotateCertificates",
            f("cacertificates", BOOL, "caCertificates"),
            f("services", STRLIST),
        ),
        ptr=True,
    ),
    f("rotate_encryption_key", BOOL, omitempty=False),
    f(
        "dns",
        struct(
            "DNSConfig",
            f("provider", STR),
            f("options", STRMAP),
            f("upstreamnameservers", STRLIST),
            f("reversecidrs", STRLIST),
            f("stubdomains", STRLISTMAP),
            f("node_selector", STRMAP),
            f("nodelocal", ANY, ptr=True),
            f("update_strategy", ANY, ptr=True),
            f("linear_autoscaler_params", ANY, ptr=True),
            f("tolerations", ANY),
        ),
        ptr=True,
    ),
    f(
        "upgrade_strategy",
        struct(
            "NodeUpgradeStrategy",
            f("max_unavailable_worker", STR),
            f("max_unavailable_controlplane", STR),
            f("drain", BOOL, ptr=True),
            f(
                "node_drain_input",
                struct(
                    "NodeDrainInput",
                    f("force", BOOL),
                    f("ignore_daemonsets", BOOL, "ignoreDaemonSets", ptr=True),
                    f("delete_local_data", BOOL),
                    f("grace_period", INT),
                    f("timeout", INT, omitempty=False),
                ),
                ptr=True,
            ),
        ),
        ptr=True,
    ),
    f("cri_dockerd_stream_server_address", STR, "criDockerdStreamServerAddress"),
    f("cri_dockerd_stream_server_port", STR, "criDockerdStreamServerPort"),
)

# ------------------------------------------------------------------------------------------
# decoding (yaml.v2 semantics)

_SHORT = {
    "tag:yaml.org,2002:str": "!!str",
    "tag:yaml.org,2002:int": "!!int",
    "tag:yaml.org,2002:float": "!!float",
    "tag:yaml.org,2002:bool": "!!bool",
    "tag:yaml.org,2002:null": "!!null",
    "tag:yaml.org,2002:seq": "!!seq",
    "tag:yaml.org,2002:map": "!!map",
    "tag:yaml.org,2002:timestamp": "!!timestamp",
    "tag:yaml.org,2002:binary": "!!binary",
}


class Decoder:
    def __init__(self) -> None:
        self.errors: list[str] = []
        import yaml

        self._yaml = yaml
        self._constructor = yaml.constructor.SafeConstructor()

    def terror(self, node, typ: T) -> None:
        tag = _SHORT.get(node.tag, node.tag)
        value = ""
        if tag not in ("!!seq", "!!map"):
            text = str(node.value)
            value = f" `{text[:7]}...`" if len(text) > 10 else f" `{text}`"
        self.errors.append(
            f"line {node.start_mark.line + 1}: cannot unmarshal {tag}{value} into {typ.go}"
        )

    def construct(self, node):
        return self._constructor.construct_object(node, deep=True)

    def decode(self, node, typ: T):
        yaml = self._yaml
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        kind = typ.kind
        if kind == "any":
            return self.construct(node)
        if kind in ("str", "int", "float", "bool"):
            if not isinstance(node, yaml.ScalarNode):
                self.terror(node, typ)
                return None
            tag = node.tag
            if kind == "str":
                return str(node.value)
            if kind == "bool":
                if tag == "tag:yaml.org,2002:bool":
                    return bool(self.construct(node))
                self.terror(node, typ)
                return None
            if kind == "int":
                if tag == "tag:yaml.org,2002:int":
                    return int(self.construct(node))
                if tag == "tag:yaml.org,2002:float":
                    value = self.construct(node)
                    if float(value).is_integer():
                        return int(value)
                self.terror(node, typ)
                return None
            if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
                return float(self.construct(node))
            self.terror(node, typ)
            return None
        if kind == "list":
            if not isinstance(node, yaml.SequenceNode):
                self.terror(node, typ)
                return None
            out = []
            for item in node.value:
                value = self.decode(item, typ.elem)
                out.append(_zero(typ.elem) if value is None else value)
            return out
        if not isinstance(node, yaml.MappingNode):
            self.terror(node, typ)
            return None
        if kind == "map":
            out = {}
            for key, value in node.value:
                out[str(key.value)] = self.decode(value, typ.elem)
                if out[str(key.value)] is None:
                    out[str(key.value)] = _zero(typ.elem)
            return out
        by_yaml = {fld.yaml: fld for fld in typ.fields}
        out = {}
        for key, value in node.value:
            fld = by_yaml.get(str(key.value))
            if fld is None:
                continue
            decoded = self.decode(value, fld.type)
            if decoded is not None:
                out[fld.yaml] = decoded
            elif fld.yaml in out:
                del out[fld.yaml]
        return out


def _zero(typ: T):
    return {"str": "", "int": 0, "float": 0.0, "bool": False, "struct": {}}.get(typ.kind)


class YamlError(Exception):
    pass


_PARSER_PROBLEMS = (
    (r"mapping values are not allowed here", "mapping values are not allowed in this context"),
    (
        r"found character .* that cannot start any token",
        "found character that cannot start any token",
    ),
    (r"expected the node content", "did not find expected node content"),
    (r"expected <block end>, but found '-'", "did not find expected key"),
    (r"expected <block end>", "did not find expected key"),
    (r"expected ',' or '\]'", "did not find expected ',' or ']'"),
    (r"expected ',' or '}'", "did not find expected ',' or '}'"),
    (r"while scanning a simple key", "could not find expected ':'"),
)


def parse(text: str) -> dict:
    """cluster.yml → dict keyed by YAML names (yaml.v2 Unmarshal into the config struct)."""
    import yaml

    try:
        docs = yaml.compose_all(text, Loader=yaml.SafeLoader)
        node = next(iter(docs), None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "unknown problem parsing YAML content"
        for pattern, replacement in _PARSER_PROBLEMS:
            if re.match(pattern, problem):
                problem = replacement
                break
        # yaml.v2 reports libyaml's 0-based line, plus one for scanner errors only
        line = 0
        if mark is not None:
            line = mark.line + (1 if isinstance(exc, yaml.scanner.ScannerError) else 0)
        raise YamlError(f"yaml: line {line}: {problem}" if line else f"yaml: {problem}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"yaml: {exc}") from None
    if node is None:
        return {}
    decoder = Decoder()
    result = decoder.decode(node, RKE_CONFIG)
    if decoder.errors:
        raise YamlError("yaml: unmarshal errors:\n  " + "\n  ".join(decoder.errors))
    return result or {}


# ------------------------------------------------------------------------------------------
# JSON (encoding/json semantics)


def to_json(value, typ: T = RKE_CONFIG):
    kind = typ.kind
    if kind == "struct":
        value = value or {}
        out = {}
        for fld in typ.fields:
            present = fld.yaml in value and value[fld.yaml] is not None
            if fld.ptr:
                if not present:
                    if not fld.omitempty:
                        out[fld.json] = None
                    continue
                out[fld.json] = to_json(value[fld.yaml], fld.type)
                continue
            if fld.type.kind == "struct":
                out[fld.json] = to_json(value.get(fld.yaml) or {}, fld.type)
                continue
            item = value.get(fld.yaml)
            if fld.omitempty and _empty(item):
                continue
            if item is None:
                item = _zero(fld.type)
            out[fld.json] = to_json(item, fld.type) if item is not None else None
        return out
    if kind == "list":
        return [to_json(v, typ.elem) for v in value] if value is not None else None
    if kind == "map":
        return (
            {k: to_json(value[k], typ.elem) for k in sorted(value)} if value is not None else None
        )
    return value


def _empty(value) -> bool:
    return value is None or value is False or value == 0 or value == "" or value in ([], {})


def from_json(value, typ: T = RKE_CONFIG):
    """The inverse of to_json: a state file's rkeConfig back to YAML-named values."""
    kind = typ.kind
    if value is None:
        return None
    if kind == "struct":
        out = {}
        for fld in typ.fields:
            if fld.json in value and value[fld.json] is not None:
                out[fld.yaml] = from_json(value[fld.json], fld.type)
        return out
    if kind == "list":
        return [from_json(v, typ.elem) for v in value]
    if kind == "map":
        return {k: from_json(v, typ.elem) for k, v in value.items()}
    return value
