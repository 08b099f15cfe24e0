"""A Kubernetes API client built from a kubeconfig's text: requests, discovery, server-side apply.

Built on the official `kubernetes` client's configuration and connection pool. Client keys and
certificates are handed to TLS through memory-only files (memfd), so no credential is ever
written to disk; tokens go in the Authorization header.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import yaml
from kubernetes import client

from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.redact import register_secret

FIELD_MANAGER = "cluster-mgmt"
APPLY_PATCH = "application/apply-patch+yaml"
TIMEOUT = (5.0, 30.0)  # connect, read (seconds) for each request


class KubeError(ClusterMgmtError):
    """A Kubernetes API request failed; `status` is its HTTP status, 0 when nothing answered."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.status)


@dataclass(frozen=True)
class Kind:
    """A resource type the cluster serves, as discovery describes it."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str = "", name: str = "") -> str:
        """The API path of the collection (or of the object `name`)."""
        base = api_root(self.api_version)
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        return f"{base}/{quote(name, safe='')}" if name else base


def api_root(api_version: str) -> str:
    """`/api/v1` for the core group, `/apis/<group>/<version>` for the others."""
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def describe(obj: dict[str, Any]) -> str:
    """`Kind namespace/name` of a manifest, for messages."""
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


class Kube:
    """One cluster's API as one identity; counts the HTTP requests it makes."""

    def __init__(self, api: client.ApiClient, server: str, token: str | None = None) -> None:
        self._api = api
        self.server = server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._kinds: dict[str, dict[str, Kind]] = {}
        self.requests = 0

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer, or KubeError (`status` 0 if none came)."""
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        headers = {**self._headers, "Content-Type": content_type}
        self.requests += 1
        try:
            response = self._api.rest_client.request(
                method, url, headers=headers, body=body, _request_timeout=TIMEOUT
            )
            data = response.read()
        except (urllib3.exceptions.HTTPError, client.ApiException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise KubeError(f"{method} {path}: no answer from {self.server} ({reason})") from None
        text = data.decode(errors="replace") if data else ""
        if not 200 <= response.status < 300:
            try:
                message = json.loads(text).get("message") or text
            except (ValueError, AttributeError):
                message = text.strip() or response.reason
            raise KubeError(f"{method} {path}: {response.status} {message}", response.status)
        return json.loads(text) if text else {}

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None if it does not exist."""
        try:
            return self.call("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def kinds(self, api_version: str) -> dict[str, Kind]:
        """The kinds served under `api_version` (one discovery request, then cached); empty
        if the cluster does not serve that group/version."""
        if api_version not in self._kinds:
            listing = self.get(api_root(api_version)) or {}
            self._kinds[api_version] = {
                r["kind"]: Kind(api_version, r["kind"], r["name"], bool(r.get("namespaced")))
                for r in listing.get("resources", [])
                if "/" not in r.get("name", "/")  # subresources such as pods/status
            }
        return self._kinds[api_version]

    def kind(self, api_version: str, kind: str) -> Kind | None:
        """The served kind `kind` of `api_version`, or None."""
        return self.kinds(api_version).get(kind)

    def path_of(self, obj: dict[str, Any]) -> str:
        """The API path of a manifest's object (KubeError if the cluster does not serve it)."""
        found = self.kind(obj["apiVersion"], obj["kind"])
        if found is None:
            raise KubeError(f"the cluster does not serve {obj['kind']} in {obj['apiVersion']}")
        meta = obj["metadata"]
        return found.path(meta.get("namespace", ""), meta["name"])

    def apply(self, obj: dict[str, Any], path: str | None = None) -> dict[str, Any]:
        """Server-side apply of `obj` as field manager `cluster-mgmt` (forcing conflicts: the
        service owns what it applies)."""
        return self.call(
            "PATCH",
            path or self.path_of(obj),
            obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type=APPLY_PATCH,
        )

    def delete(self, obj: dict[str, Any], path: str | None = None) -> bool:
        """Delete `obj`; False if it did not exist."""
        try:
            self.call("DELETE", path or self.path_of(obj))
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _memfile(data: bytes, name: str) -> tuple[int, str]:
    """A memory-only file holding `data`; readable by path while the descriptor is open."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd, f"/proc/self/fd/{fd}"


def _b64(entry: dict[str, Any], key: str) -> bytes | None:
    value = entry.get(f"{key}-data")
    if value:
        return base64.b64decode(value)
    if entry.get(key):
        raise KubeError(f"kubeconfig {key} names a file; embed it as {key}-data instead")
    return None


def current_context(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster and user entries of the kubeconfig's current context."""

    def named(section: str, name: str) -> dict[str, Any]:
        for entry in doc.get(section) or []:
            if entry.get("name") == name:
                return entry.get(section[:-1]) or {}
        raise KubeError(f"kubeconfig has no {section[:-1]} {name!r}")

    contexts = doc.get("contexts") or []
    wanted = doc.get("current-context") or (contexts[0]["name"] if contexts else None)
    if not wanted:
        raise KubeError("kubeconfig has no context")
    context = named("contexts", wanted)
    return named("clusters", context.get("cluster", "")), named("users", context.get("user", ""))


@contextmanager
def connect(kubeconfig: str) -> Iterator[Kube]:
    """A client for the current context of `kubeconfig` (text), closed on exit.

    Only embedded credentials are accepted (`*-data` fields, `token`), as RKE and this service
    write them; each becomes a redacted secret.
    """
    try:
        doc = yaml.safe_load(kubeconfig)
    except yaml.YAMLError:
        raise KubeError("kubeconfig does not parse as YAML") from None
    if not isinstance(doc, dict):
        raise KubeError("kubeconfig is not a YAML mapping")
    cluster, user = current_context(doc)
    if not cluster.get("server"):
        raise KubeError("kubeconfig's cluster has no server")
    conf = client.Configuration()
    conf.host = cluster["server"]
    # a refused connection is retried briefly; a request the server took is never repeated
    conf.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.1)
    ca = _b64(cluster, "certificate-authority")
    if ca:
        conf.ca_cert_data = ca.decode()
    fds: list[int] = []
    try:
        cert, key = _b64(user, "client-certificate"), _b64(user, "client-key")
        if cert and key:
            register_secret(user.get("client-key-data"))
            fd, conf.cert_file = _memfile(cert, "client-certificate")
            fds.append(fd)
            fd, conf.key_file = _memfile(key, "client-key")
            fds.append(fd)
        token = user.get("token")
        register_secret(token)
        api = client.ApiClient(conf)
        try:
            yield Kube(api, conf.host, token)
        finally:
            api.close()
    finally:
        for fd in fds:
            os.close(fd)
