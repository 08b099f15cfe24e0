"""The resources the lab API server serves (what discovery lists) and the bootstrap RBAC roles."""

from __future__ import annotations

from dataclasses import dataclass

# no "watch": the lab does not serve watches (405), as for a resource that cannot be watched
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update"]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    name: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def discovery(self) -> dict:
        entry = {
            "name": self.name,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": VERBS,
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        return entry


RESOURCES = [
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",)),
    Resource("", "v1", "nodes", "Node", False, ("no",)),
    Resource("", "v1", "pods", "Pod", True, ("po",)),
    Resource("", "v1", "services", "Service", True, ("svc",)),
    Resource("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    Resource("", "v1", "events", "Event", True, ("ev",)),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",)),
    Resource("apps", "v1", "deployments", "Deployment", True, ("deploy",)),
    Resource("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",)),
    Resource("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",)),
    Resource("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",)),
    Resource("batch", "v1", "jobs", "Job", True),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",)),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
]
BY_PATH = {(r.group, r.version, r.name): r for r in RESOURCES}
BY_KEY = {r.key: r for r in RESOURCES}
GROUPS = sorted({r.group for r in RESOURCES if r.group})


def _rule(groups, resources, verbs) -> dict:
    return {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}


READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
_WORKLOADS = ["pods", "services", "configmaps", "serviceaccounts", "persistentvolumeclaims"]
_APPS = ["deployments", "daemonsets", "statefulsets", "replicasets"]


def bootstrap_cluster_roles() -> dict[str, list[dict]]:
    """The default user-facing ClusterRoles, with the rules that matter for the lab."""
    view = [
        _rule([""], [*_WORKLOADS, "events", "namespaces"], READ),
        _rule(["apps"], _APPS, READ),
        _rule(["batch"], ["jobs"], READ),
        _rule(["networking.k8s.io"], ["ingresses", "networkpolicies"], READ),
    ]
    edit = [
        *view,
        _rule([""], [*_WORKLOADS, "secrets"], READ + WRITE),
        _rule(["apps"], _APPS, READ + WRITE),
        _rule(["batch"], ["jobs"], READ + WRITE),
        _rule(["networking.k8s.io"], ["ingresses", "networkpolicies"], READ + WRITE),
    ]
    admin = [*edit, _rule(["rbac.authorization.k8s.io"], ["roles", "rolebindings"], READ + WRITE)]
    everything = [
        _rule(["*"], ["*"], ["*"]),
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ]
    return {"cluster-admin": everything, "admin": admin, "edit": edit, "view": view}


PUBLIC_PATHS = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")
