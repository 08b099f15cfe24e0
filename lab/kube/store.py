"""The lab API server's "etcd": Kubernetes objects kept in the etcd nodes' data directories.

The objects live under the key `objects` of `<node root>/var/lib/etcd/lab-kube-store.json` on every
etcd node (the file the lab rke already keeps its cluster model in), so an etcd snapshot carries
them, a restore brings them back and `rke remove` wipes them, as on a real cluster. Writes go to
every node's file (temporary file and rename); a file changed underneath (a restore) is re-read.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

STORE_RELATIVE = "var/lib/etcd/lab-kube-store.json"


class Store:
    """Objects by `(resource key, namespace, name)`; one global resourceVersion counter."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self.lock = threading.RLock()
        self._doc: dict = {}
        self._seen: object = None

    def _stamp(self) -> object:
        stamps = []
        for path in self.paths:
            try:
                st = path.stat()
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _load(self) -> None:
        stamp = self._stamp()
        if stamp == self._seen:
            return
        self._doc = {}
        for path in self.paths:
            try:
                self._doc = json.loads(path.read_text())
                break
            except (OSError, ValueError):
                continue
        self._doc.setdefault("objects", {})
        self._seen = stamp

    def _flush(self) -> None:
        payload = json.dumps(self._doc, indent=1)
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
            os.replace(tmp, path)
        self._seen = self._stamp()

    @staticmethod
    def key(resource: str, namespace: str, name: str) -> str:
        return f"{resource}|{namespace}|{name}"

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            self._load()
            obj = self._doc["objects"].get(self.key(resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str = "") -> list[dict]:
        with self.lock:
            self._load()
            prefix = f"{resource}|{namespace}|" if namespace else f"{resource}|"
            return [
                copy.deepcopy(o)
                for k, o in sorted(self._doc["objects"].items())
                if k.startswith(prefix)
            ]

    def resource_version(self) -> str:
        with self.lock:
            self._load()
            return str(self._doc.get("resourceVersion", 1))

    def put(self, resource: str, obj: dict) -> dict:
        """Store `obj` with a new resourceVersion; returns the stored copy."""
        with self.lock:
            self._load()
            version = int(self._doc.get("resourceVersion", 1)) + 1
            self._doc["resourceVersion"] = version
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(version)
            meta = obj["metadata"]
            self._doc["objects"][self.key(resource, meta.get("namespace", ""), meta["name"])] = obj
            self._flush()
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            self._load()
            obj = self._doc["objects"].pop(self.key(resource, namespace, name), None)
            if obj is not None:
                self._doc["resourceVersion"] = int(self._doc.get("resourceVersion", 1)) + 1
                self._flush()
            return obj
