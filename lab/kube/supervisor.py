"""The lab supervisor: a long-lived owner of the lab's Kubernetes API servers.

`LabSupervisor(workdir)` is a context manager. It listens on a unix socket (`socket_path`, mode
0600) and exports it as `LAB_KUBE_SUPERVISOR` while it runs; the lab `rke` (a short-lived process)
asks it to start and stop API servers, tests inject faults through the same channel. API servers
run as threads of the supervisor's process, so they die with it, even on SIGKILL.

Protocol: one JSON object per line, one answer per line: `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`. Requests (`op`):

- `start` {address, port?, ca_pem, ca_key_pem, cert_pem, key_pem, sa_key_pem, version,
  store_paths}: (re)start the API server on `address:port` (default 6443).
- `stop` {address, port?}: stop it (the port is closed afterwards).
- `servers`: the `address:port` of every running server.
- `api` {address, mode: up|down|hang|slow, delay?}: `down` closes the port (connection
  refused), `hang` accepts connections and never answers, `slow` answers after `delay` seconds.
- `etcd` {address, healthy}: `/readyz` and `/livez` report `[-]etcd failed` while unhealthy.
- `tokens` {address, running}: the token controller stops (token Secrets stay empty) or runs.
- `node` {address, name, ready}: the node's Ready condition turns Unknown (NotReady) or True.
- `pod` {address, namespace, name, crashloop}: the pod crash-loops (CrashLoopBackOff, not ready).
- `certificate` {address, not_after}: serve a kube-apiserver certificate (same key and SANs,
  signed by the cluster CA) that ends at `not_after` (ISO 8601); null goes back to RKE's.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Self

from lab.kube.apiserver import ApiServer

ENV = "LAB_KUBE_SUPERVISOR"


class SupervisorError(Exception):
    pass


def call(op: str, socket_path: str | None = None, timeout: float = 30.0, **args) -> dict:
    """Send one request to the supervisor (at `socket_path` or `$LAB_KUBE_SUPERVISOR`)."""
    path = socket_path or os.environ.get(ENV, "")
    if not path:
        raise SupervisorError(f"no lab supervisor: {ENV} is not set")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise SupervisorError(f"lab supervisor at {path} does not answer: {exc}") from None
        sock.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        answer = sock.makefile("rb").readline()
    if not answer:
        raise SupervisorError("lab supervisor closed the connection")
    reply = json.loads(answer)
    if not reply.get("ok"):
        raise SupervisorError(reply.get("error", "unknown error"))
    return reply


def configured() -> bool:
    return bool(os.environ.get(ENV))


class _Control(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    supervisor: LabSupervisor


class _ControlHandler(socketserver.StreamRequestHandler):
    server: _Control

    def handle(self) -> None:
        line = self.rfile.readline()
        if not line:
            return
        try:
            request = json.loads(line)
            reply = {"ok": True, **(self.server.supervisor.handle(request) or {})}
        except Exception as exc:  # noqa: BLE001 - every failure is answered
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write((json.dumps(reply) + "\n").encode())


class LabSupervisor:
    """Owns the lab API servers; stop it (or let it die) and they are gone."""

    def __init__(self, workdir: Path | str, export: bool = True) -> None:
        self.workdir = Path(workdir)
        self.socket_path = str(self.workdir / "supervisor.sock")
        self.export = export
        self.servers: dict[str, ApiServer] = {}
        self.lock = threading.Lock()
        self._control: _Control | None = None
        self._previous_env: str | None = None

    def call(self, op: str, **args) -> dict:
        return call(op, self.socket_path, **args)

    def server(self, address: str, port: int = 6443) -> ApiServer:
        with self.lock:
            found = self.servers.get(f"{address}:{port}")
        if found is None:
            raise KeyError(f"no lab API server on {address}:{port}")
        return found

    def handle(self, request: dict) -> dict | None:
        op = request.get("op")
        address = request.get("address", "")
        port = int(request.get("port") or 6443)
        key = f"{address}:{port}"
        if op == "start":
            with self.lock:
                old = self.servers.pop(key, None)
                if old is not None:
                    old.stop()
                server = ApiServer(request)
                server.start()
                self.servers[key] = server
            return {"server": f"https://{key}"}
        if op == "stop":
            with self.lock:
                old = self.servers.pop(key, None)
            if old is not None:
                old.stop()
            return {"stopped": old is not None}
        if op == "servers":
            with self.lock:
                return {"servers": sorted(self.servers)}
        server = self.server(address, port)
        if op == "api":
            server.set_mode(request["mode"], float(request.get("delay") or 0))
        elif op == "etcd":
            server.etcd_healthy = bool(request["healthy"])
        elif op == "tokens":
            server.token_controller = bool(request["running"])
        elif op == "node":
            server.set_node_ready(request["name"], bool(request["ready"]))
        elif op == "pod":
            server.set_pod_crashloop(
                request["namespace"], request["name"], bool(request["crashloop"])
            )
        elif op == "certificate":
            return {"certificate": server.serve_certificate(request.get("not_after"))}
        else:
            raise ValueError(f"unknown op {op!r}")
        return None

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path(self.socket_path).unlink(missing_ok=True)
        old_umask = os.umask(0o177)
        try:
            self._control = _Control(self.socket_path, _ControlHandler)
        finally:
            os.umask(old_umask)
        self._control.supervisor = self
        threading.Thread(target=self._control.serve_forever, daemon=True).start()
        if self.export:
            self._previous_env = os.environ.get(ENV)
            os.environ[ENV] = self.socket_path
        return self

    def stop(self) -> None:
        with self.lock:
            servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            server.stop()
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            self._control = None
        Path(self.socket_path).unlink(missing_ok=True)
        if self.export:
            if self._previous_env is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = self._previous_env

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """`python -m lab.kube.supervisor DIR`: run a supervisor until killed (for the demo)."""
    import signal
    import sys

    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else ".lab/supervisor")
    with LabSupervisor(workdir) as supervisor:
        print(f"{ENV}={supervisor.socket_path}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
