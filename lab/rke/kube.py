"""The Kubernetes API as rke reaches it: over HTTPS with the admin kubeconfig (client-go).

The lab's API server (lab.kube, started by `rke up` when a lab supervisor runs) listens on
`<controlplane>:6443`; without one these calls fail the way client-go fails against a closed port
(`dial tcp ...: connect: connection refused`). rke's error texts wrap them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
from urllib.parse import urlparse

TIMEOUT = "30s"


class KubeError(Exception):
    pass


def load(path: str) -> dict:
    """clientcmd.BuildConfigFromFlags: server, CA and client cert/key of the current context."""
    import yaml

    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        raise KubeError(f"stat {path}: no such file or directory") from None
    except OSError as exc:
        raise KubeError(f"open {path}: {exc.strerror.lower()}") from None
    try:
        doc = yaml.safe_load(text) or {}
        ctx_name = doc.get("current-context", "")
        context = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
    except Exception:  # noqa: BLE001 - any malformed kubeconfig
        raise KubeError(
            "invalid configuration: no configuration has been provided, try setting "
            "KUBERNETES_MASTER environment variable"
        ) from None
    return {
        "server": cluster.get("server", ""),
        "ca": base64.b64decode(cluster.get("certificate-authority-data", "") or ""),
        "cert": base64.b64decode(user.get("client-certificate-data", "") or ""),
        "key": base64.b64decode(user.get("client-key-data", "") or ""),
        "token": user.get("token", ""),
    }


def request(
    config: dict,
    method: str,
    path: str,
    body: dict | None = None,
    content_type: str = "application/json",
) -> tuple[int, bytes]:
    url = urlparse(config["server"])
    host, port = url.hostname or "", url.port or 443
    full = f"{config['server']}{path}?timeout={TIMEOUT}"
    context = ssl.create_default_context(cadata=config["ca"].decode() if config["ca"] else None)
    context.check_hostname = False
    files = []
    try:
        if config["cert"] and config["key"]:
            for data in (config["cert"], config["key"]):
                handle = tempfile.NamedTemporaryFile(delete=False)  # noqa: SIM115
                handle.write(data)
                handle.close()
                files.append(handle.name)
            context.load_cert_chain(files[0], files[1])
        conn = http.client.HTTPSConnection(host, port, timeout=2, context=context)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": content_type} if payload else {}
            headers["User-Agent"] = "rke/v1.6.3"
            sep = "&" if "?" in path else "?"
            conn.request(method, f"{path}{sep}timeout={TIMEOUT}", body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
    except ConnectionRefusedError:
        raise KubeError(
            f'{method.capitalize()} "{full}": dial tcp {host}:{port}: connect: connection refused'
        ) from None
    except TimeoutError:
        raise KubeError(
            f'{method.capitalize()} "{full}": dial tcp {host}:{port}: i/o timeout'
        ) from None
    except ssl.SSLError as exc:
        raise KubeError(f'{method.capitalize()} "{full}": tls: {exc.reason}') from None
    except OSError as exc:
        raise KubeError(f'{method.capitalize()} "{full}": dial tcp {host}:{port}: {exc}') from None
    finally:
        for name in files:
            os.unlink(name)


def server_version(path: str) -> str:
    """cluster.GetK8sVersion: `%#v` of version.Info, or rke's error text."""
    try:
        config = load(path)
    except KubeError as exc:
        raise KubeError(f"[state] Failed to create Kubernetes Client: {exc}") from None
    try:
        status, body = request(config, "GET", "/version")
    except KubeError as exc:
        raise KubeError(f"[state] Failed to get Kubernetes server version: {exc}") from None
    if status != 200:
        raise KubeError(
            f"[state] Failed to get Kubernetes server version: the server has asked for the "
            f"client to provide credentials (status {status})"
        )
    info = json.loads(body)
    fields = (
        "major",
        "minor",
        "gitVersion",
        "gitCommit",
        "gitTreeState",
        "buildDate",
        "goVersion",
        "compiler",
        "platform",
    )
    parts = [f'{f[0].upper()}{f[1:]}:"{info.get(f, "")}"' for f in fields]
    return "version.Info{" + ", ".join(parts) + "}"


def get_secret(path: str, name: str) -> dict:
    config = load(path)
    status, body = request(config, "GET", f"/api/v1/namespaces/kube-system/secrets/{name}")
    if status == 404:
        raise KubeError(f'secrets "{name}" not found')
    if status != 200:
        raise KubeError(f"the server returned status {status}")
    return json.loads(body)
