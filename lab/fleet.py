"""A lab fleet: N READY clusters on a state volume, their API servers served by one process.

`python -m lab.fleet --clusters N --faults 0.1 DIR` creates (or reuses) the state volume
`DIR/volume` with N clusters in environment `fleet` (or another; status READY, cluster.yml, an rkestate with
the cluster's own CA and certificates, the admin kubeconfig), serves their lab Kubernetes API
servers (lab.kube's `ApiServer`) on 127.1.x.y:6443 under one `LabSupervisor` (its socket
controls faults, as for clusters `rke up` brought up), prints `ready` and runs until killed.

A share `--faults` of the clusters is broken, spread evenly over the fault kinds in `FAULTS`;
`DIR/expected.json` says which cluster has which fault and the verdict a monitor must give.
Broken the way it happens: through the supervisor (API down, hanging, etcd unhealthy, node
NotReady, pod crash-looping), through the state RKE wrote (a certificate expiring or expired),
or through credentials (a kubeconfig whose CA is not the cluster's, or a client certificate of a
foreign CA that the server answers with 401).

Fleet servers run no controllers (their objects are written once, at creation), so a thousand of
them idle cheaply. Clusters share a small pool of RSA keys to keep creation fast; each still has
its own CA certificate, and the credential faults use keys of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import ipaddress
import json
import selectors
import signal
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from cluster_mgmt.identity import ClusterId
from cluster_mgmt.state import StateVolume
from lab.kube.apiserver import ApiServer, Handler, _pod_status, _ready_condition, _Server
from lab.kube.store import Store
from lab.kube.supervisor import LabSupervisor
from lab.rke import pki

ENVIRONMENT = "fleet"
VERSION = "v1.30.5-rancher1-1"
KEY_POOL = 6
# fault kind -> the verdict a monitor must give
FAULTS = {
    "api-down": "Unreachable",
    "api-hang": "Unreachable",
    "wrong-ca": "Unreachable",
    "unauthorized": "Unreachable",
    "etcd-unhealthy": "Degraded",
    "node-notready": "Degraded",
    "pod-crashloop": "Degraded",
    "cert-expiring": "Degraded",
    "cert-expired": "Degraded",
}
SYSTEM_PODS = ("coredns-5d78c9869d-lab01", "canal-lab01", "metrics-server-7f5c8c6d5b-lab01")


def address(index: int, base: str = "127.1.0.1") -> str:
    """The loopback address of cluster `index` (127.1.0.1, 127.1.0.2, ...)."""
    return str(ipaddress.ip_address(base) + index)


def plan(count: int, share: float) -> list[str | None]:
    """The fault of each cluster (None: healthy): `share` of them, kinds in turn, spread out."""
    broken = round(count * share)
    kinds = list(FAULTS)
    faults: list[str | None] = [None] * count
    if broken:
        step = count / broken
        for i in range(broken):
            faults[int(i * step)] = kinds[i % len(kinds)]
    return faults


class Dispatcher:
    """One thread accepting connections for every fleet server (a thousand `serve_forever`
    threads polling twice a second would starve the handlers of the GIL); each accepted
    connection is handled in its own thread, as `ThreadingHTTPServer` does."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, httpd: _Server) -> None:
        self.selector.register(httpd.socket, selectors.EVENT_READ, httpd)

    def remove(self, httpd: _Server) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(httpd.socket)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self.selector.select(timeout=0.2)
            except (OSError, ValueError):
                continue
            for key, _ in ready:
                with contextlib.suppress(OSError, ValueError):
                    key.data._handle_request_noblock()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.selector.close()


class FleetServer(ApiServer):
    """A lab API server without controllers (its objects are written once, at creation) whose
    connections are accepted by the fleet's `Dispatcher`."""

    dispatcher: Dispatcher

    def start(self) -> None:
        self._bootstrap()
        self._listen()

    def _listen(self) -> None:
        handler = type("Handler", (Handler,), {"api": self})
        self._httpd = _Server((self.address, self.port), handler, self._ctx, self)
        self._httpd.socket.setblocking(False)
        self.dispatcher.add(self._httpd)

    def _close(self) -> None:
        if self._httpd is not None:
            self.dispatcher.remove(self._httpd)
            self._httpd.server_close()
            self._httpd = None


@dataclass
class Pki:
    """One cluster's certificates: the CA, the API server's and the admin's."""

    bundle: dict
    ca_pem: str
    ca_key_pem: str
    api_cert_pem: str
    api_key_pem: str
    admin_cert_pem: str
    admin_key_pem: str


def _cert(ca, ca_key, cn: str, key, not_after: datetime.datetime, orgs=None):
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs or []]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - datetime.timedelta(days=400), not_after))
        .not_valid_after(not_after)
    )
    return builder.sign(ca_key, hashes.SHA256())


def make_pki(host: str, keys: list, fault: str | None) -> Pki:
    """Certificates as RKE writes them (kube-ca, kube-apiserver, kube-admin, ...), for `host`."""
    ca_key, api_key, admin_key = keys[0], keys[1], keys[2]
    ca = pki.ca_cert("kube-ca", ca_key)
    api = pki.signed_cert(ca, ca_key, True, "kube-apiserver", (["kubernetes"], [host]), api_key)
    admin = pki.signed_cert(ca, ca_key, False, "kube-admin", None, admin_key, ["system:masters"])
    now = datetime.datetime.now(datetime.UTC)
    node_end = now + datetime.timedelta(days=3650)
    if fault == "cert-expiring":
        node_end = now + datetime.timedelta(days=9)
    elif fault == "cert-expired":
        node_end = now - datetime.timedelta(days=3)
    node = _cert(ca, ca_key, "system:node", keys[3], node_end, ["system:nodes"])
    bundle = {
        pki.CA: pki.cert_object(pki.CA, "kube-ca", "", ca, ca_key),
        pki.KUBE_API: pki.cert_object(pki.KUBE_API, "kube-apiserver", "", api, api_key),
        pki.KUBE_ADMIN: pki.cert_object(
            pki.KUBE_ADMIN, "kube-admin", "system:masters", admin, admin_key
        ),
        "kube-node": pki.cert_object("kube-node", "system:node", "system:nodes", node, keys[3]),
        pki.SA_TOKEN: pki.cert_object(pki.SA_TOKEN, "kube-service-account-token", "", api, api_key),
    }
    return Pki(
        bundle,
        pki.cert_pem(ca),
        pki.key_pem(ca_key),
        pki.cert_pem(api),
        pki.key_pem(api_key),
        pki.cert_pem(admin),
        pki.key_pem(admin_key),
    )


def kubeconfig(host: str, cluster_name: str, ca_pem: str, cert_pem: str, key_pem: str) -> str:
    """The admin kubeconfig RKE writes (kube_config_cluster.yml)."""
    return pki.kubeconfig_data(
        f"https://{host}:6443", cluster_name, "kube-admin", ca_pem, cert_pem, key_pem
    )


def _objects(template: dict, host: str, nodes: list[str]) -> dict:
    """The store of a fleet cluster: the bootstrap objects, its nodes, kube-system pods."""
    doc = copy.deepcopy(template)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    version = int(doc.get("resourceVersion", 1))
    for name in nodes:
        version += 1
        doc["objects"][Store.key("/nodes", "", name)] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(version),
                "creationTimestamp": stamp,
                "labels": {"kubernetes.io/hostname": name},
            },
            "spec": {},
            "status": {
                "addresses": [{"type": "InternalIP", "address": host}],
                "conditions": [_ready_condition(True)],
                "nodeInfo": {"kubeletVersion": VERSION.split("-")[0]},
            },
        }
    for name in SYSTEM_PODS:
        version += 1
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "kube-system",
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(version),
                "creationTimestamp": stamp,
            },
            "spec": {
                "containers": [{"name": name.split("-")[0], "image": "lab"}],
                "nodeName": nodes[0],
            },
        }
        pod["status"] = _pod_status(pod, False)
        doc["objects"][Store.key("/pods", "kube-system", name)] = pod
    doc["resourceVersion"] = version
    return doc


def _template(workdir: Path, sample: Pki) -> dict:
    """The objects every API server bootstraps (namespaces, RBAC), made once."""
    path = workdir / "template-store.json"
    server = FleetServer(
        {
            "address": "127.0.0.1",
            "ca_pem": sample.ca_pem,
            "ca_key_pem": sample.ca_key_pem,
            "cert_pem": sample.api_cert_pem,
            "key_pem": sample.api_key_pem,
            "sa_key_pem": sample.api_key_pem,
            "store_paths": [str(path)],
        }
    )
    server._bootstrap()
    return json.loads(path.read_text())


class Fleet:
    """Create the fleet's state and serve its API servers; a context manager."""

    def __init__(
        self,
        workdir: Path | str,
        clusters: int,
        faults: float = 0.1,
        base_address: str = "127.1.0.1",
        supervisor: LabSupervisor | None = None,
        environment: str = ENVIRONMENT,
    ) -> None:
        if not 0 <= faults <= 1:
            raise ValueError(f"--faults is a share between 0 and 1, got {faults}")
        self.workdir = Path(workdir).absolute()
        self.count = clusters
        self.share = faults
        self.base = base_address
        self.volume = StateVolume(self.workdir / "volume")
        self.environment = environment
        self.supervisor = supervisor
        self._own_supervisor = supervisor is None
        self.expected: dict[str, dict] = {}
        self.pkis: dict[str, Pki] = {}
        self.dispatcher: Dispatcher | None = None

    def name(self, index: int) -> str:
        return f"c{index:05d}"

    def create(self) -> None:
        """Write every cluster's state directory and `expected.json`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.volume.initialise()
        pool = pki.new_keys(KEY_POOL)
        faults = plan(self.count, self.share)
        for index, fault in enumerate(faults):
            host, name = address(index, self.base), self.name(index)
            keys = [pool[(index + k) % KEY_POOL] for k in range(4)]
            cluster_pki = make_pki(host, keys, fault)
            self.pkis[name] = cluster_pki
            self._write_cluster(name, host, cluster_pki, fault)
            self.expected[name] = {
                "environment": self.environment,
                "name": name,
                "address": host,
                "fault": fault,
                "verdict": FAULTS.get(fault, "Healthy") if fault else "Healthy",
            }
        (self.workdir / "expected.json").write_text(json.dumps(self.expected, indent=1))

    def _write_cluster(self, name: str, host: str, own: Pki, fault: str | None) -> None:
        cluster = self.volume.cluster(self.environment, name)
        cluster.create()
        cluster_name = ClusterId(self.environment, name).rke_cluster_name
        nodes = [{"address": host, "user": "rke", "role": ["controlplane", "etcd", "worker"]}]
        cluster.write_text(
            "cluster.yml",
            yaml.safe_dump(
                {"cluster_name": cluster_name, "nodes": nodes, "kubernetes_version": VERSION}
            ),
        )
        state = {"rkeConfig": {"kubernetesVersion": VERSION}, "certificatesBundle": own.bundle}
        cluster.write_text(
            "cluster.rkestate", json.dumps({"desiredState": state, "currentState": state})
        )
        ca, cert, key = own.ca_pem, own.admin_cert_pem, own.admin_key_pem
        if fault in ("wrong-ca", "unauthorized"):
            foreign = make_pki(host, pki.new_keys(1) * 4, None)
            if fault == "wrong-ca":  # the kubeconfig trusts another CA than the server's
                ca = foreign.ca_pem
            else:  # a client certificate the cluster's CA never signed
                cert, key = foreign.admin_cert_pem, foreign.admin_key_pem
        cluster.write_text("kube_config_cluster.yml", kubeconfig(host, cluster_name, ca, cert, key))
        cluster.write_status("READY", "provision", "lab-fleet", "provisioned by lab.fleet")
        cluster.mark_rke_state_written()

    def load(self) -> None:
        """Read the plan of a fleet created before (`expected.json`) and its PKI."""
        self.expected = json.loads((self.workdir / "expected.json").read_text())
        for name in self.expected:
            state = json.loads(
                self.volume.cluster(self.environment, name).read_text("cluster.rkestate") or "{}"
            )
            bundle = state["currentState"]["certificatesBundle"]
            self.pkis[name] = Pki(
                bundle,
                bundle[pki.CA]["certificatePEM"],
                bundle[pki.CA]["keyPEM"],
                bundle[pki.KUBE_API]["certificatePEM"],
                bundle[pki.KUBE_API]["keyPEM"],
                bundle[pki.KUBE_ADMIN]["certificatePEM"],
                bundle[pki.KUBE_ADMIN]["keyPEM"],
            )

    def serve(self) -> None:
        """Start every cluster's API server under the supervisor and apply the faults."""
        if self.supervisor is None:
            self.supervisor = LabSupervisor(self.workdir / "supervisor", export=False).start()
        self.dispatcher = Dispatcher()
        first = self.pkis[next(iter(self.expected))]
        template = _template(self.workdir, first)
        for name, entry in self.expected.items():
            host, own = entry["address"], self.pkis[name]
            store = self.workdir / "kube" / name / "lab-kube-store.json"
            if not store.exists():
                store.parent.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps(_objects(template, host, [f"{name}-node1"])))
            server = FleetServer(
                {
                    "address": host,
                    "ca_pem": own.ca_pem,
                    "ca_key_pem": own.ca_key_pem,
                    "cert_pem": own.api_cert_pem,
                    "key_pem": own.api_key_pem,
                    "sa_key_pem": own.api_key_pem,
                    "version": VERSION,
                    "store_paths": [str(store)],
                }
            )
            server.dispatcher = self.dispatcher
            server.start()
            with self.supervisor.lock:
                self.supervisor.servers[f"{host}:6443"] = server
            self.inject(name, entry["fault"], server)

    @staticmethod
    def inject(name: str, fault: str | None, server: ApiServer) -> None:
        """Break `server` the way `fault` says (credential and certificate faults are in the
        state files already)."""
        if fault == "api-down":
            server.set_mode("down")
        elif fault == "api-hang":
            server.set_mode("hang")
        elif fault == "etcd-unhealthy":
            server.etcd_healthy = False
        elif fault == "node-notready":
            server.set_node_ready(f"{name}-node1", False)
        elif fault == "pod-crashloop":
            server.set_pod_crashloop("kube-system", SYSTEM_PODS[0], True)

    def start(self) -> Self:
        if (self.workdir / "expected.json").exists():
            self.load()
            if len(self.expected) != self.count:
                raise ValueError(
                    f"{self.workdir} holds a fleet of {len(self.expected)} clusters, not "
                    f"{self.count}: use another directory"
                )
        else:
            self.create()
        self.serve()
        return self

    def stop(self) -> None:
        if self.supervisor is not None and self._own_supervisor:
            self.supervisor.stop()
        elif self.supervisor is not None:
            for entry in self.expected.values():
                self.supervisor.handle({"op": "stop", "address": entry["address"]})
        if self.dispatcher is not None:
            self.dispatcher.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m lab.fleet --clusters N --faults 0.1 DIR`: serve a fleet until killed."""
    parser = argparse.ArgumentParser(prog="python -m lab.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--faults", type=float, default=0.1)
    parser.add_argument("--base-address", default="127.1.0.1")
    args = parser.parse_args(argv)
    fleet = Fleet(args.directory, args.clusters, args.faults, args.base_address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fleet:
        print(f"ready {fleet.volume.root} {len(fleet.expected)} clusters", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    sys.exit(0)


if __name__ == "__main__":
    main()
