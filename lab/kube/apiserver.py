"""One lab kube-apiserver: HTTPS on `<controlplane address>:6443`, the cluster's PKI, RBAC, CRUD.

Runs as threads inside the lab supervisor. Besides the API it runs the few controllers whose
effects clients rely on: namespaces get their `default` ServiceAccount and `kube-root-ca.crt`,
token Secrets get their token, deleted namespaces are emptied, Deployments, DaemonSets and
StatefulSets get Running pods on the cluster's nodes, orphaned pods are collected.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import re
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonpatch
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from lab.kube import auth, fields, tls
from lab.kube.resources import BY_KEY, BY_PATH, GROUPS, RESOURCES, Resource, bootstrap_cluster_roles
from lab.kube.store import Store

NS = "/namespaces"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_RE = re.compile(f"^{LABEL}$")
SUBDOMAIN_RE = re.compile(rf"^{LABEL}(\.{LABEL})*$")
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
    f"for validation is '{LABEL}')"
)
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    f"for validation is '{LABEL}(\\.{LABEL})*')"
)
HEALTH_CHECKS = [
    "ping",
    "log",
    "etcd",
    "etcd-readiness",
    "informer-sync",
    "poststarthook/start-apiserver-admission-initializer",
    "poststarthook/generic-apiserver-start-informers",
    "poststarthook/priority-and-fairness-config-consumer",
    "poststarthook/priority-and-fairness-filter",
    "poststarthook/storage-object-count-tracker-hook",
    "poststarthook/start-apiextensions-informers",
    "poststarthook/start-apiextensions-controllers",
    "poststarthook/crd-informer-synced",
    "poststarthook/start-service-ip-repair-controllers",
    "poststarthook/rbac/bootstrap-roles",
    "poststarthook/scheduling/bootstrap-system-priority-classes",
    "poststarthook/priority-and-fairness-config-producer",
    "poststarthook/start-system-namespaces-controller",
    "poststarthook/bootstrap-controller",
    "poststarthook/start-cluster-authentication-info-controller",
    "poststarthook/start-legacy-token-tracking-controller",
    "poststarthook/aggregator-reload-proxy-client-cert",
    "poststarthook/start-kube-aggregator-informers",
    "poststarthook/apiservice-registration-controller",
    "poststarthook/apiservice-status-available-controller",
    "poststarthook/kube-apiserver-autoregistration",
    "autoregister-completion",
    "poststarthook/apiservice-openapi-controller",
    "poststarthook/apiservice-discovery-controller",
    "shutdown",
]
LIVEZ_SKIP = {"etcd-readiness", "informer-sync", "shutdown"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str, **extra) -> dict:
    details = {"name": name, **({"group": res.group} if res.group else {}), "kind": res.name}
    return {**details, **extra}


def not_found(res: Resource, name: str) -> ApiError:
    label = f"{res.name}.{res.group}" if res.group else res.name
    return ApiError(404, "NotFound", f'{label} "{name}" not found', _details(res, name))


def not_supported(res: Resource, action: str) -> ApiError:
    """405 as kube-apiserver answers an action a resource's storage does not offer."""
    label = f"{res.name}.{res.group}" if res.group else res.name
    details = {**({"group": res.group} if res.group else {}), "kind": res.name}
    return ApiError(
        405,
        "MethodNotAllowed",
        f'{action} is not supported on resources of kind "{label}"',
        details,
    )


def invalid(res: Resource, name: str, field: str, value: str, detail: str) -> ApiError:
    message = f'Invalid value: "{value}": {detail}'
    return ApiError(
        422,
        "Invalid",
        f'{res.kind} "{name}" is invalid: {field}: {message}',
        {
            "name": name,
            **({"group": res.group} if res.group else {}),
            "kind": res.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}],
        },
    )


def _merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _selector_matches(selector: str, labels: dict) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class ApiServer:
    """A kube-apiserver for one lab cluster; `start()`/`stop()`; faults through its methods."""

    def __init__(self, spec: dict) -> None:
        self.address: str = spec["address"]
        self.port: int = int(spec.get("port", 6443))
        # --advertise-address: rke passes the node's internal address
        self.advertise_address: str = spec.get("advertise_address") or self.address
        self.ca_pem: str = spec["ca_pem"]
        self.ca_key_pem: str = spec["ca_key_pem"]
        self.cert_pem: str = spec["cert_pem"]
        self.key_pem: str = spec["key_pem"]
        self.sa_key_pem: str = spec["sa_key_pem"]
        self.git_version: str = spec.get("version", "v1.30.5").split("-")[0]
        self.store = Store([Path(p) for p in spec["store_paths"]])
        with warnings.catch_warnings():  # RKE's CA has serial number 0, as Go's pki writes it
            warnings.simplefilter("ignore")
            self.ca = x509.load_pem_x509_certificate(self.ca_pem.encode())
        self.mode = "up"  # up | down (port closed) | hang (accepts, never answers)
        self.delay = 0.0
        self.etcd_healthy = True
        self.token_controller = True  # False: token Secrets stay empty (controller manager down)
        self.not_after: str | None = None
        self._released = threading.Condition()
        self._stopping = threading.Event()
        self._httpd: tls.TLSServer | None = None
        self._serving: threading.Thread | None = None
        self._controller: threading.Thread | None = None
        self._ctx = tls.context(self.cert_pem, self.key_pem, self.ca_pem)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._bootstrap()
        self._listen()
        self._controller = threading.Thread(target=self._control_loop, daemon=True)
        self._controller.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._released:
            self._released.notify_all()
        self._close()
        if self._controller is not None:
            self._controller.join(timeout=5)

    def _listen(self) -> None:
        handler = type("Handler", (Handler,), {"api": self})
        self._httpd = _Server((self.address, self.port), handler, self._ctx, self)
        self._serving = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._serving.start()

    def _close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # --- faults -----------------------------------------------------------------------------------
    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        if mode not in ("up", "down", "hang", "slow"):
            raise ValueError(f"unknown API mode {mode!r}: use up, down, hang or slow")
        self.delay = delay if mode == "slow" else 0.0
        self.mode = "up" if mode == "slow" else mode
        with self._released:
            self._released.notify_all()
        if self.mode == "down":
            self._close()
        elif self._httpd is None:
            self._listen()

    def wait_if_hanging(self) -> bool:
        """Block while the server hangs; False when the connection should just be dropped."""
        with self._released:
            while self.mode == "hang" and not self._stopping.is_set():
                self._released.wait()
        return not self._stopping.is_set() and self.mode == "up"

    def serve_certificate(self, not_after: str | None) -> str:
        """Serve a kube-apiserver certificate ending at `not_after` (ISO 8601), or RKE's again."""
        cert_pem = self.cert_pem
        if not_after:
            end = datetime.datetime.fromisoformat(not_after)
            original = x509.load_pem_x509_certificate(self.cert_pem.encode())
            key = serialization.load_pem_private_key(self.key_pem.encode(), None)
            ca_key = serialization.load_pem_private_key(self.ca_key_pem.encode(), None)
            builder = (
                x509.CertificateBuilder()
                .subject_name(original.subject)
                .issuer_name(self.ca.subject)
                .public_key(key.public_key())  # type: ignore[union-attr]
                .serial_number(x509.random_serial_number())
                .not_valid_before(min(original.not_valid_before_utc, end - datetime.timedelta(1)))
                .not_valid_after(end)
            )
            for ext in original.extensions:
                builder = builder.add_extension(ext.value, ext.critical)
            cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
            cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.not_after = not_after
        self._ctx = tls.context(cert_pem, self.key_pem, self.ca_pem)
        if self._httpd is not None:
            self._httpd.ssl_context = self._ctx
        return cert_pem

    def set_node_ready(self, name: str, ready: bool) -> None:
        node = self.store.get("/nodes", "", name)
        if node is None:
            raise KeyError(f'nodes "{name}" not found')
        node["status"]["conditions"] = [
            c for c in node["status"].get("conditions", []) if c["type"] != "Ready"
        ] + [_ready_condition(ready)]
        self.store.put("/nodes", node)

    def set_pod_crashloop(self, namespace: str, name: str, crashing: bool) -> None:
        pod = self.store.get("/pods", namespace, name)
        if pod is None:
            raise KeyError(f'pods "{name}" not found')
        pod.setdefault("metadata", {}).setdefault("annotations", {})
        if crashing:
            pod["metadata"]["annotations"]["lab.cluster-mgmt/crashloop"] = "true"
        else:
            pod["metadata"]["annotations"].pop("lab.cluster-mgmt/crashloop", None)
        pod["status"] = _pod_status(pod, crashing)
        self.store.put("/pods", pod)

    # --- data -------------------------------------------------------------------------------------
    def _bootstrap(self) -> None:
        for name in SYSTEM_NAMESPACES:
            if self.store.get(NS, "", name) is None:
                self.create(BY_KEY[NS], "", {"metadata": {"name": name}}, "kube-apiserver")
        roles = bootstrap_cluster_roles()
        rbac = "rbac.authorization.k8s.io"
        for name, rules in roles.items():
            if self.store.get(f"{rbac}/clusterroles", "", name) is None:
                labels = {"kubernetes.io/bootstrapping": "rbac-defaults"}
                self.create(
                    BY_KEY[f"{rbac}/clusterroles"],
                    "",
                    {"metadata": {"name": name, "labels": labels}, "rules": rules},
                    "kube-apiserver",
                )
        if self.store.get(f"{rbac}/clusterrolebindings", "", "cluster-admin") is None:
            self.create(
                BY_KEY[f"{rbac}/clusterrolebindings"],
                "",
                {
                    "metadata": {"name": "cluster-admin"},
                    "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "system:masters"}],
                },
                "kube-apiserver",
            )

    def validate_name(self, res: Resource, name: str) -> None:
        if res.name in ("namespaces", "services"):
            if not LABEL_RE.match(name) or len(name) > 63:
                raise invalid(res, name, "metadata.name", name, LABEL_MSG)
        elif not SUBDOMAIN_RE.match(name) or len(name) > 253:
            if res.key.startswith("rbac."):
                return
            raise invalid(res, name, "metadata.name", name, SUBDOMAIN_MSG)

    def _check_namespace(self, res: Resource, namespace: str, name: str) -> None:
        if not res.namespaced:
            return
        ns = self.store.get(NS, "", namespace)
        if ns is None:
            raise not_found(BY_KEY[NS], namespace)
        if ns.get("status", {}).get("phase") == "Terminating":
            raise ApiError(
                403,
                "Forbidden",
                f'{res.name} "{name}" is forbidden: unable to create new content in namespace '
                f"{namespace} because it is being terminated",
                {
                    **_details(res, name),
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def create(self, res: Resource, namespace: str, body: dict, manager: str) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f'{res.kind} "" is invalid: metadata.name: Required value: name or '
                "generateName is required",
                {
                    "kind": res.kind,
                    "causes": [{"reason": "FieldValueRequired", "field": "metadata.name"}],
                },
            )
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            meta["namespace"] = namespace
        self.validate_name(res, name)
        with self.store.lock:
            self._check_namespace(res, namespace, name)
            if self.store.get(res.key, namespace, name) is not None:
                label = f"{res.name}.{res.group}" if res.group else res.name
                raise ApiError(
                    409, "AlreadyExists", f'{label} "{name}" already exists', _details(res, name)
                )
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta.pop("resourceVersion", None)
            if "spec" in obj:
                meta["generation"] = 1
            self._defaults(res, obj)
            fields.record_update(None, obj, manager, res.api_version)
            return self.store.put(res.key, obj)

    def _defaults(self, res: Resource, obj: dict) -> None:
        meta = obj["metadata"]
        if res.name == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif res.name in ("secrets", "configmaps"):
            if res.name == "secrets":
                obj.setdefault("type", "Opaque")
                for key, value in (obj.pop("stringData", None) or {}).items():
                    obj.setdefault("data", {})[key] = base64.b64encode(value.encode()).decode()
        elif res.name == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault(
                "clusterIP", f"10.43.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 2}"
            )
        elif res.name == "pods":
            obj.setdefault("status", {"phase": "Pending"})
        elif res.name in ("deployments", "statefulsets"):
            obj.setdefault("spec", {}).setdefault("replicas", 1)

    def update(
        self, res: Resource, namespace: str, name: str, body: dict, manager: str, sub: str = ""
    ) -> dict:
        with self.store.lock:
            current = self.store.get(res.key, namespace, name)
            if current is None:
                raise not_found(res, name)
            new = copy.deepcopy(body)
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the name of the object ({meta['name']}) does not match the name on the URL "
                    f"({name})",
                )
            version = meta.get("resourceVersion")
            if version and version != current["metadata"]["resourceVersion"]:
                label = f"{res.name}.{res.group}" if res.group else res.name
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {label} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    _details(res, name),
                )
            if sub == "status":
                merged = copy.deepcopy(current)
                merged["status"] = new.get("status", {})
                new = merged
            elif (
                res.name not in ("secrets", "configmaps", "serviceaccounts") and "status" in current
            ):
                new["status"] = current["status"]
            new["apiVersion"], new["kind"] = res.api_version, res.kind
            for key in ("uid", "creationTimestamp", "deletionTimestamp"):
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
            meta["name"] = name
            if res.namespaced:
                meta["namespace"] = namespace
            if "generation" in current["metadata"]:
                changed = new.get("spec") != current.get("spec")
                meta["generation"] = current["metadata"]["generation"] + (1 if changed else 0)
            if res.name == "namespaces":
                new["spec"], new["status"] = current["spec"], current["status"]
            elif res.name == "secrets":
                for key, value in (new.pop("stringData", None) or {}).items():
                    new.setdefault("data", {})[key] = base64.b64encode(value.encode()).decode()
            meta["managedFields"] = current["metadata"].get("managedFields", [])
            fields.record_update(current, new, manager, res.api_version)
            if _same(current, new):
                return current
            return self.store.put(res.key, new)

    def patch(
        self, res, namespace: str, name: str, content_type: str, raw: bytes, query: dict, sub: str
    ) -> tuple[int, dict]:
        manager = query.get("fieldManager", "")
        if content_type.startswith("application/apply-patch"):
            if not manager:
                raise ApiError(
                    400, "BadRequest", "PATCH " + "fieldManager is required for apply patch"
                )
            try:
                applied = yaml.safe_load(raw) or {}
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"error decoding YAML: {exc}") from None
            if not isinstance(applied, dict):
                raise ApiError(400, "BadRequest", "apply patch must be an object")
            force = query.get("force", "false") == "true"
            with self.store.lock:
                current = self.store.get(res.key, namespace, name)
                applied.setdefault("metadata", {})["name"] = applied["metadata"].get("name", name)
                if applied["metadata"]["name"] != name:
                    raise ApiError(
                        400,
                        "BadRequest",
                        f"the name of the object ({applied['metadata']['name']}) does not match "
                        f"the name on the URL ({name})",
                    )
                try:
                    merged = fields.apply(current, applied, manager, force, res.api_version)
                except fields.ApplyConflict as exc:
                    message, causes = fields.conflict_message(exc.conflicts, res.api_version)
                    raise ApiError(
                        409, "Conflict", message, {**_details(res, name), "causes": causes}
                    ) from None
                if current is None:
                    managed = merged["metadata"].pop("managedFields")
                    created = self.create(res, namespace, merged, manager)
                    created["metadata"]["managedFields"] = managed
                    return 201, self.store.put(res.key, created)
                merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                managed = merged["metadata"]["managedFields"]
                result = self.update(res, namespace, name, merged, manager, sub)
                if result["metadata"].get("managedFields") != managed and not _same(
                    current, merged
                ):
                    result["metadata"]["managedFields"] = managed
                    result = self.store.put(res.key, result)
                return 200, result
        try:
            patch = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"error decoding patch: {exc}") from None
        with self.store.lock:
            current = self.store.get(res.key, namespace, name)
            if current is None:
                raise not_found(res, name)
            if content_type.startswith("application/json-patch+json"):
                try:
                    new = jsonpatch.apply_patch(current, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise ApiError(422, "Invalid", str(exc)) from None
            elif content_type.startswith(
                ("application/merge-patch+json", "application/strategic-merge-patch+json")
            ):
                new = _merge_patch(current, patch)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json-patch+json, application/merge-patch+json, "
                    f'application/apply-patch+yaml; got "{content_type}"',
                )
            if (
                not (patch.get("metadata") or {}).get("resourceVersion")
                if isinstance(patch, dict)
                else True
            ):
                new.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                    "resourceVersion"
                ]
            return 200, self.update(res, namespace, name, new, manager or "unknown", sub)

    def delete(self, res: Resource, namespace: str, name: str) -> dict:
        with self.store.lock:
            current = self.store.get(res.key, namespace, name)
            if current is None:
                raise not_found(res, name)
            if res.name == "namespaces":
                if name in SYSTEM_NAMESPACES:
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                        _details(res, name),
                    )
                current["metadata"].setdefault("deletionTimestamp", now())
                current["status"] = {"phase": "Terminating"}
                return self.store.put(res.key, current)
            self.store.delete(res.key, namespace, name)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {**_details(res, name), "uid": current["metadata"]["uid"]},
        }

    def list(self, res: Resource, namespace: str, query: dict) -> dict:
        items = self.store.list(res.key, namespace)
        selector = query.get("labelSelector", "")
        field_sel = query.get("fieldSelector", "")
        out = []
        for item in items:
            if selector and not _selector_matches(selector, item["metadata"].get("labels") or {}):
                continue
            if field_sel:
                flat = {
                    "metadata.name": item["metadata"]["name"],
                    "metadata.namespace": item["metadata"].get("namespace", ""),
                }
                if not _selector_matches(field_sel, flat):
                    continue
            item.pop("apiVersion", None)
            item.pop("kind", None)
            out.append(item)
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": self.store.resource_version()},
            "items": out,
        }

    # --- controllers ----------------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._stopping.wait(0.15):
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - a controller keeps going, as kube's do
                time.sleep(0.5)

    def reconcile(self) -> None:
        namespaces = self.store.list(NS)
        for ns in namespaces:
            name = ns["metadata"]["name"]
            if ns.get("status", {}).get("phase") == "Terminating":
                self._finalize_namespace(name)
                continue
            if self.store.get("/serviceaccounts", name, "default") is None:
                self._quiet_create("/serviceaccounts", name, {"metadata": {"name": "default"}})
            if self.store.get("/configmaps", name, "kube-root-ca.crt") is None:
                self._quiet_create(
                    "/configmaps",
                    name,
                    {"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": self.ca_pem}},
                )
        if self.token_controller:
            self._tokens()
        self._workloads()

    def _quiet_create(self, key: str, namespace: str, body: dict) -> None:
        try:
            self.create(BY_KEY[key], namespace, body, "kube-controller-manager")
        except ApiError:
            pass

    def _finalize_namespace(self, name: str) -> None:
        for res in RESOURCES:
            if res.namespaced:
                for obj in self.store.list(res.key, name):
                    self.store.delete(res.key, name, obj["metadata"]["name"])
        self.store.delete(NS, "", name)

    def _tokens(self) -> None:
        for secret in self.store.list("/secrets"):
            if secret.get("type") != "kubernetes.io/service-account-token":
                continue
            meta = secret["metadata"]
            notes = meta.get("annotations") or {}
            account = notes.get("kubernetes.io/service-account.name", "")
            sa = self.store.get("/serviceaccounts", meta["namespace"], account)
            if (
                sa is None
                or notes.get("kubernetes.io/service-account.uid", sa["metadata"]["uid"])
                != sa["metadata"]["uid"]
            ):
                if (secret.get("data") or {}).get("token"):
                    self.store.delete("/secrets", meta["namespace"], meta["name"])
                continue
            if (secret.get("data") or {}).get("token"):
                continue
            token = auth.sign_token(
                self.sa_key_pem, meta["namespace"], meta["name"], account, sa["metadata"]["uid"]
            )
            meta.setdefault("annotations", {})["kubernetes.io/service-account.uid"] = sa[
                "metadata"
            ]["uid"]
            secret["data"] = {
                **(secret.get("data") or {}),
                "token": base64.b64encode(token.encode()).decode(),
                "ca.crt": base64.b64encode(self.ca_pem.encode()).decode(),
                "namespace": base64.b64encode(meta["namespace"].encode()).decode(),
            }
            self.store.put("/secrets", secret)

    def _workloads(self) -> None:
        nodes = [n["metadata"]["name"] for n in self.store.list("/nodes")]
        owners = {}
        for key in ("apps/deployments", "apps/daemonsets", "apps/statefulsets"):
            for obj in self.store.list(key):
                owners[obj["metadata"]["uid"]] = (key, obj)
        pods = self.store.list("/pods")
        by_owner: dict[str, list[dict]] = {}
        for pod in pods:
            refs = pod["metadata"].get("ownerReferences") or []
            if refs:
                if refs[0]["uid"] not in owners:
                    self.store.delete(
                        "/pods", pod["metadata"]["namespace"], pod["metadata"]["name"]
                    )
                    continue
                by_owner.setdefault(refs[0]["uid"], []).append(pod)
            if pod.get("status", {}).get("phase") == "Pending" and nodes:
                pod.setdefault("spec", {}).setdefault("nodeName", nodes[0])
                pod["status"] = _pod_status(pod, False)
                self.store.put("/pods", pod)
        for uid, (key, obj) in owners.items():
            self._reconcile_workload(key, obj, by_owner.get(uid, []), nodes)

    def _reconcile_workload(self, key: str, obj: dict, pods: list[dict], nodes: list[str]) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        kind = obj["kind"]
        if kind == "DaemonSet":
            wanted = {f"{meta['name']}-{_short(meta['uid'] + n)}": n for n in nodes}
        elif kind == "StatefulSet":
            wanted = {
                f"{meta['name']}-{i}": nodes[i % len(nodes)] if nodes else ""
                for i in range(int(spec.get("replicas", 1)))
            }
        else:
            digest = _short(json.dumps(template, sort_keys=True), 10)
            wanted = {
                f"{meta['name']}-{digest}-{_short(meta['uid'] + str(i))}": nodes[i % len(nodes)]
                if nodes
                else ""
                for i in range(int(spec.get("replicas", 1)))
            }
        have = {p["metadata"]["name"]: p for p in pods}
        for name in set(have) - set(wanted):
            self.store.delete("/pods", meta["namespace"], name)
        for name, node in wanted.items():
            if name in have:
                continue
            pod = {
                "metadata": {
                    **(template.get("metadata") or {}),
                    "name": name,
                    "ownerReferences": [
                        {
                            "apiVersion": obj["apiVersion"],
                            "kind": kind,
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {**(template.get("spec") or {}), "nodeName": node},
            }
            pod["status"] = _pod_status(pod, False)
            try:
                self.create(BY_KEY["/pods"], meta["namespace"], pod, "kube-controller-manager")
            except ApiError:
                continue
        current = [
            p
            for p in self.store.list("/pods", meta["namespace"])
            if p["metadata"]["name"] in wanted
        ]
        ready = sum(1 for p in current if _pod_ready(p))
        count = len(wanted)
        if kind == "DaemonSet":
            status = {
                "currentNumberScheduled": count,
                "desiredNumberScheduled": count,
                "numberAvailable": ready,
                "numberMisscheduled": 0,
                "numberReady": ready,
                "updatedNumberScheduled": count,
                "observedGeneration": meta.get("generation", 1),
            }
            if ready < count:
                status["numberUnavailable"] = count - ready
        else:
            status = {
                "replicas": count,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": count,
                "observedGeneration": meta.get("generation", 1),
            }
        if obj.get("status") != status:
            fresh = self.store.get(key, meta["namespace"], meta["name"])
            if (
                fresh is not None
                and fresh["metadata"]["resourceVersion"] == meta["resourceVersion"]
            ):
                fresh["status"] = status
                self.store.put(key, fresh)


def _short(text: str, size: int = 5) -> str:
    """A stable random-looking suffix, as the controllers' generated names have."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    number = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    out = ""
    for _ in range(size):
        number, rest = divmod(number, len(alphabet))
        out += alphabet[rest]
    return out


def _same(a: dict, b: dict) -> bool:
    def strip(o: dict) -> dict:
        o = copy.deepcopy(o)
        for key in ("resourceVersion", "managedFields"):
            o.get("metadata", {}).pop(key, None)
        return o

    return strip(a) == strip(b)


def _ready_condition(ready: bool) -> dict:
    stamp = now()
    if ready:
        return {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
    return {
        "type": "Ready",
        "status": "Unknown",
        "reason": "NodeStatusUnknown",
        "message": "Kubelet stopped posting node status.",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def _pod_ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions", [])
    )


def _pod_status(pod: dict, crashing: bool) -> dict:
    stamp = now()
    containers = (pod.get("spec") or {}).get("containers") or [{"name": "main", "image": ""}]
    statuses = []
    for c in containers:
        entry = {
            "name": c.get("name", "main"),
            "image": c.get("image", ""),
            "imageID": "",
            "ready": not crashing,
            "started": not crashing,
            "restartCount": 7 if crashing else 0,
        }
        if crashing:
            entry["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 5m0s restarting failed container={c.get('name', 'main')}",
                }
            }
            entry["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error"}}
        else:
            entry["state"] = {"running": {"startedAt": stamp}}
        statuses.append(entry)
    ready = "False" if crashing else "True"
    return {
        "phase": "Running",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": stamp},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
        ],
        "containerStatuses": statuses,
        "startTime": stamp,
        "qosClass": "BestEffort",
    }


class _Server(tls.TLSServer):
    def __init__(self, address, handler, ctx, api: ApiServer) -> None:
        self.api = api
        super().__init__(address, handler, ctx)

    def finish_request(self, request, client_address) -> None:
        if not self.api.wait_if_hanging():
            return
        super().finish_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: ApiServer

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send(self, code: int, body: dict | str, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> auth.User | None:
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return auth.user_from_token(header[7:].strip(), self.api.sa_key_pem, self.api.store)
        return auth.user_from_cert(getattr(self.connection, "peer_der", None), self.api.ca)

    def _serve(self, method: str) -> None:
        if self.api.delay:
            time.sleep(self.api.delay)
        if not self.api.wait_if_hanging():
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        user = self._user()
        if user is None:
            self._send(401, ApiError(401, "Unauthorized", "Unauthorized").status())
            return
        try:
            code, body, ctype = self._route(method, url.path.rstrip("/") or "/", query, raw, user)
        except ApiError as exc:
            code, body, ctype = exc.code, exc.status(), "application/json"
        self._send(code, body, ctype)

    def _route(self, method, path, query, raw, user) -> tuple[int, dict | str, str]:
        api = self.api
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            return self._non_resource(method, path, query, user)
        if parts[0] == "api":
            if len(parts) == 1:
                self._allow(user, "get", path=path)
                return 200, _api_versions(api), "application/json"
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                self._allow(user, "get", path=path)
                return 200, _group_list(), "application/json"
            group = parts[1]
            if group not in GROUPS:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(parts) == 2:
                self._allow(user, "get", path=path)
                return 200, _group(group), "application/json"
            version, rest = parts[2], parts[3:]
        if not rest:
            self._allow(user, "get", path=path)
            listing = [r for r in RESOURCES if r.group == group and r.version == version]
            if not listing:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return 200, _resource_list(group, version, listing), "application/json"
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        res = BY_PATH.get((group, version, rest[0]))
        if res is None or (namespace and not res.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub not in ("", "status"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verb = {
            "GET": "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }[method]
        resource = f"{res.name}/{sub}" if sub else res.name
        if not auth.allowed(api.store, user, verb, group, resource, namespace, name):
            raise ApiError(
                403,
                "Forbidden",
                auth.forbidden_message(user, verb, group, resource, namespace, name, ""),
                _details(res, name),
            )
        manager = query.get("fieldManager") or _manager(self.headers.get("User-Agent", ""))
        body = json.loads(raw) if raw and method in ("POST", "PUT") else {}
        if method == "POST" and name:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if verb == "get":
            obj = api.store.get(res.key, namespace, name)
            if obj is None:
                raise not_found(res, name)
            return 200, obj, "application/json"
        if verb == "watch":  # not served: discovery leaves "watch" out of the verbs
            raise not_supported(res, "watch")
        if verb == "list":
            return 200, api.list(res, namespace, query), "application/json"
        if verb == "create":
            if not res.namespaced:
                namespace = ""
            return 201, api.create(res, namespace, body, manager), "application/json"
        if verb == "update":
            return 200, api.update(res, namespace, name, body, manager, sub), "application/json"
        if verb == "patch":
            ctype = self.headers.get("Content-Type", "")
            code, obj = api.patch(res, namespace, name, ctype, raw, query, sub)
            return code, obj, "application/json"
        if verb == "delete":
            return 200, api.delete(res, namespace, name), "application/json"
        listing = api.list(res, namespace, query)
        for item in listing["items"]:
            api.delete(res, item["metadata"].get("namespace", ""), item["metadata"]["name"])
        return (
            200,
            {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": {}, "items": []},
            "application/json",
        )

    def _allow(self, user, verb: str, path: str) -> None:
        if not auth.allowed(self.api.store, user, verb, path=path):
            raise ApiError(
                403, "Forbidden", auth.forbidden_message(user, verb, "", "", "", "", path), {}
            )

    def _non_resource(self, method, path, query, user) -> tuple[int, dict | str, str]:
        self._allow(user, method.lower() if method != "GET" else "get", path)
        api = self.api
        if path == "/version":
            major, minor = api.git_version.lstrip("v").split(".")[:2]
            return (
                200,
                {
                    "major": major,
                    "minor": minor,
                    "gitVersion": api.git_version,
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2024-09-12T00:00:00Z",
                    "goVersion": "go1.22.6",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                },
                "application/json",
            )
        for check in ("/healthz", "/livez", "/readyz"):
            if path == check or path.startswith(check + "/"):
                return self._health(check[1:], path[len(check) + 1 :], query)
        return 404, "404 page not found\n", "text/plain; charset=utf-8"

    def _health(self, kind: str, single: str, query: dict) -> tuple[int, str, str]:
        checks = [c for c in HEALTH_CHECKS if kind == "readyz" or c not in LIVEZ_SKIP]
        failed = set() if self.api.etcd_healthy else {"etcd", "etcd-readiness"}
        if single:
            if single not in checks:
                return 404, "404 page not found\n", "text/plain; charset=utf-8"
            if single in failed:
                return (
                    500,
                    "internal server error: etcd client connection not yet established\n",
                    "text/plain; charset=utf-8",
                )
            return 200, "ok", "text/plain; charset=utf-8"
        failing = [c for c in checks if c in failed]
        if not failing and "verbose" not in query:
            return 200, "ok", "text/plain; charset=utf-8"
        lines = [f"[-]{c} failed: reason withheld" if c in failed else f"[+]{c} ok" for c in checks]
        verdict = f"{kind} check failed" if failing else f"{kind} check passed"
        return (
            (500 if failing else 200),
            "\n".join([*lines, verdict]) + "\n",
            "text/plain; charset=utf-8",
        )


def _manager(agent: str) -> str:
    return agent.split("/")[0] if agent else "unknown"


def _api_versions(api: ApiServer) -> dict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{api.advertise_address}:{api.port}"}
        ],
    }


def _group(group: str) -> dict:
    versions = sorted({r.version for r in RESOURCES if r.group == group})
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def _group_list() -> dict:
    groups = []
    for group in GROUPS:
        entry = _group(group)
        entry.pop("kind")
        entry.pop("apiVersion")
        groups.append(entry)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _resource_list(group: str, version: str, listing: list[Resource]) -> dict:
    resources = []
    for r in listing:
        resources.append(r.discovery())
        if r.name in (
            "pods",
            "deployments",
            "daemonsets",
            "statefulsets",
            "namespaces",
            "nodes",
            "services",
        ):
            resources.append(
                {
                    "name": f"{r.name}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
