"""Recovering a cluster's RKE state, and proving it belongs to the live cluster.

Recovered state comes from a history copy, an archived directory, RKE's in-cluster copy (the
Secret ``kube-system/full-cluster-state``) or ``rke util get-state-file``. Before anything is
promoted, its CA is checked against the live cluster: the API server's serving certificate
must chain to the recovered ``kube-ca``. State with a foreign CA is refused, since rke would
then treat the cluster as someone else's.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from cluster_mgmt.errors import RefusedError
from cluster_mgmt.node_shell import NodeAccess, NodeCommandError, node_path, run_command
from cluster_mgmt.patterns import TextRule
from cluster_mgmt.preflight import NodeTarget
from cluster_mgmt.state import (
    CLUSTER_YML,
    CUSTOMER_KUBECONFIG,
    KNOWN_HOSTS,
    KUBECONFIG,
    RKESTATE,
    STATUS,
    ClusterState,
    StateVolume,
    Status,
)
from cluster_mgmt.state_files import CA, is_kubeconfig, is_rkestate, is_yaml_mapping, load_yaml

if TYPE_CHECKING:  # the Kubernetes client is imported only where a cluster is called
    from cluster_mgmt.kube import Kube

API_PORT = 6443
KUBE_ADMIN = "kube-admin"
STATE_SECRET = "/api/v1/namespaces/kube-system/secrets/full-cluster-state"  # noqa: S105 - a path
STATE_CONFIGMAP = "/api/v1/namespaces/kube-system/configmaps/full-cluster-state"
STATE_KEY = "full-cluster-state"
RESTORED = (KUBECONFIG, CLUSTER_YML, KNOWN_HOSTS, CUSTOMER_KUBECONFIG)
"""Files a source directory may give besides cluster.rkestate (with managed resources)."""
_VALID = {RKESTATE: is_rkestate, KUBECONFIG: is_kubeconfig, CLUSTER_YML: is_yaml_mapping}


# A history or archive entry is a directory named `<stamp>-<operation>` or `<name>-<stamp>`.
HISTORY_ENTRY = TextRule(
    r"[0-9A-Za-z](?:[-.0-9A-Za-z]{0,118}[0-9A-Za-z])?",
    120,
    "give an entry's directory name as the cluster's history or archive lists it (no '/')",
)
HistoryEntry = HISTORY_ENTRY.stated()


class RecoverySource(StrEnum):
    """Where recover-cluster-state takes the cluster's state from."""

    HISTORY = "history"
    ARCHIVE = "archive"
    IN_CLUSTER = "in-cluster"
    RKE_UTIL = "rke-util"


class ForeignCaError(RefusedError):
    """The recovered state's CA is not the CA the live cluster uses."""


@dataclass
class Recovered:
    """State recovered for one cluster, in memory only (never logged, never a result)."""

    origin: str
    rkestate: bytes
    donor: dict[str, bytes] = field(default_factory=dict)
    spec_hash: str | None = None

    @property
    def ca(self) -> str:
        return state_ca(self.rkestate)

    def kubeconfig(self) -> bytes | None:
        """The admin kubeconfig: rebuilt from the state (as `rke util get-kubeconfig` does),
        else the source's own if it trusts the same CA."""
        rebuilt = admin_kubeconfig(self.rkestate)
        if rebuilt is not None:
            return rebuilt
        donor = self.donor.get(KUBECONFIG)
        if donor is not None and same_certificate(kubeconfig_ca(donor), self.ca):
            return donor
        return None


def _certificate(pem: str | bytes) -> x509.Certificate:
    with warnings.catch_warnings():  # RKE's CA has serial number 0
        warnings.simplefilter("ignore")
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def same_certificate(a: str | None, b: str | None) -> bool:
    """True if both PEM texts hold the same certificate."""
    if not a or not b:
        return False
    return _certificate(a) == _certificate(b)


def _states(rkestate: bytes) -> list[dict[str, Any]]:
    doc = json.loads(rkestate)
    return [s for s in (doc.get("currentState"), doc.get("desiredState")) if isinstance(s, dict)]


def state_ca(rkestate: bytes) -> str:
    """The PEM of the state's kube-ca (current state first)."""
    for state in _states(rkestate):
        pem = ((state.get("certificatesBundle") or {}).get(CA) or {}).get("certificatePEM")
        if pem:
            return pem
    raise ValueError("the state holds no kube-ca")


def admin_kubeconfig(rkestate: bytes) -> bytes | None:
    """The kube-admin kubeconfig RKE keeps in the state, if complete."""
    for state in _states(rkestate):
        text = ((state.get("certificatesBundle") or {}).get(KUBE_ADMIN) or {}).get("config")
        if text and is_kubeconfig(text.encode()):
            return text.encode() + (b"" if text.endswith("\n") else b"\n")
    return None


def kubeconfig_ca(kubeconfig: bytes) -> str | None:
    """The PEM CA of the kubeconfig's first cluster."""
    doc = load_yaml(kubeconfig) or {}
    clusters = doc.get("clusters") or [{}]
    data = (clusters[0].get("cluster") or {}).get("certificate-authority-data")
    return base64.b64decode(data).decode() if data else None


def _rke_config(rkestate: bytes) -> dict[str, Any]:
    for state in _states(rkestate):
        if isinstance(state.get("rkeConfig"), dict):
            return state["rkeConfig"]
    return {}


def state_nodes(rkestate: bytes) -> dict[str, tuple[str, ...]]:
    """``{address: sorted roles}`` of the nodes in the state (current state first)."""
    nodes = _rke_config(rkestate).get("nodes") or []
    return {n["address"]: tuple(sorted(n.get("role") or [])) for n in nodes}


def config_nodes(cluster_yml: bytes) -> dict[str, tuple[str, ...]]:
    """``{address: sorted roles}`` of the nodes in cluster.yml."""
    nodes = (load_yaml(cluster_yml) or {}).get("nodes") or []
    return {n["address"]: tuple(sorted(n.get("role") or [])) for n in nodes}


def controlplane_addresses(rkestate: bytes) -> list[str]:
    """Addresses of the state's control plane nodes, in the order RKE lists them."""
    nodes = _rke_config(rkestate).get("nodes") or []
    return [n["address"] for n in nodes if "controlplane" in (n.get("role") or [])]


# --- sources -----------------------------------------------------------------------------------


def read_directory(path: Path) -> dict[str, bytes]:
    """The restorable files of a history entry or archived directory; broken ones left out."""
    files = {}
    for name in (RKESTATE, *RESTORED):
        data = (path / name).read_bytes() if (path / name).is_file() else None
        if data is not None and _VALID.get(name, bool)(data):
            files[name] = data
    for resource in sorted((path / "resources").glob("*.yaml")):
        files[f"resources/{resource.name}"] = resource.read_bytes()
    return files


def recorded_spec_hash(path: Path) -> str | None:
    """The spec hash the status record in `path` carries, if any."""
    try:
        return Status.from_json((path / STATUS).read_bytes()).spec_hash
    except (OSError, ValueError):
        return None


def from_directory(path: Path, origin: str) -> Recovered:
    """State from a history entry or an archived directory (RefusedError if it holds none)."""
    files = read_directory(path)
    rkestate = files.pop(RKESTATE, None)
    if rkestate is None:
        raise RefusedError(f"{origin} holds no complete cluster.rkestate; choose another entry")
    return Recovered(origin, rkestate, files, recorded_spec_hash(path))


def _named(entries: list[Path], entry: str | None, what: str) -> Path:
    if entry is None:
        return entries[-1]
    for path in entries:
        if path.name == entry:
            return path
    listed = ", ".join(p.name for p in entries[-5:])
    raise RefusedError(f"no {what} entry {entry!r}; the newest are: {listed}")


def history_source(cluster: ClusterState, entry: str | None) -> Recovered:
    """A named history entry, or the newest holding a complete cluster.rkestate."""
    entries = cluster.history_copies()
    if entry is None:
        entries = [p for p in entries if is_rkestate(_read(p / RKESTATE))]
    if not entries:
        raise RefusedError(
            f"cluster {cluster.environment}/{cluster.name} has no history copy of its state on "
            "this volume; recover it with source archive, in-cluster or rke-util"
        )
    path = _named(entries, entry, "history")
    return from_directory(path, f"history entry {path.name}")


def archive_source(
    volume: StateVolume, environment: str, name: str, entry: str | None
) -> Recovered:
    """A named archived directory of the cluster, or the newest."""
    entries = volume.archived(environment, name)
    if not entries:
        raise RefusedError(
            f"no archived directory of {environment}/{name} under {volume.archive_root}; "
            "recover with source history, in-cluster or rke-util"
        )
    path = _named(entries, entry, "archive")
    return from_directory(path, f"archive {path.name}")


def donor_directory(cluster: ClusterState, volume: StateVolume) -> Path | None:
    """Where the admin kubeconfig and cluster.yml of a live cluster can be found: its own
    directory, else the newest history copy, else its newest archive that has both."""
    candidates = [cluster.dir, *reversed(cluster.history_copies())]
    candidates += reversed(volume.archived(cluster.environment, cluster.name))
    for path in candidates:
        if is_kubeconfig(_read(path / KUBECONFIG)) and is_yaml_mapping(_read(path / CLUSTER_YML)):
            return path
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return b""


def read_in_cluster_state(kube: Kube) -> bytes:
    """RKE's in-cluster copy of the state: the Secret, else the older ConfigMap."""
    secret = kube.get(STATE_SECRET)
    if secret is not None and (secret.get("data") or {}).get(STATE_KEY):
        data = base64.b64decode(secret["data"][STATE_KEY])
    else:
        configmap = kube.get(STATE_CONFIGMAP)
        if configmap is None or not (configmap.get("data") or {}).get(STATE_KEY):
            raise RefusedError(
                "the cluster has no Secret or ConfigMap kube-system/full-cluster-state; try "
                "source rke-util or history"
            )
        data = configmap["data"][STATE_KEY].encode()
    if not is_rkestate(data):
        raise RefusedError(
            "kube-system/full-cluster-state does not hold complete RKE state; try another source"
        )
    return data


# --- the CA check ------------------------------------------------------------------------------


def serving_certificate_trusted(
    address: str, ca_pem: str, port: int = API_PORT, timeout: float = 10.0
) -> bool:
    """True if the TLS server at `address:port` presents a chain signed by `ca_pem`, False if
    it presents another; OSError if it cannot be reached."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the CA is the question, not the name
    context.load_verify_locations(cadata=ca_pem)
    with socket.create_connection((address, port), timeout=timeout) as sock:
        try:
            with context.wrap_socket(sock):
                return True
        except ssl.SSLCertVerificationError:
            return False


def probe_live_ca(rkestate: bytes, timeout: float = 10.0) -> tuple[str | None, bool, str]:
    """Ask the state's control planes in order: (address of the first API server that
    answered, whether its certificate is signed by the state's kube-ca, why others did not)."""
    ca, reasons = state_ca(rkestate), []
    for address in controlplane_addresses(rkestate):
        try:
            return address, serving_certificate_trusted(address, ca, timeout=timeout), ""
        except OSError as exc:
            reasons.append(f"{address}:{API_PORT}: {exc.strerror or exc}")
    return None, False, "; ".join(reasons) or "the state names no control plane"


def check_live_ca(recovered: Recovered, timeout: float = 10.0) -> str:
    """Prove the recovered CA is the live cluster's: the first control plane whose API server
    answers must present a certificate signed by it. Returns where it was checked; raises
    ForeignCaError (a foreign CA) or RefusedError (no API server answered)."""
    address, trusted, unreachable = probe_live_ca(recovered.rkestate, timeout)
    if address is None:
        raise RefusedError(
            f"cannot check {recovered.origin} against the live cluster: no control plane API "
            f"server answered ({unreachable}); nothing was promoted. Bring the control plane "
            "back, then recover again"
        )
    if not trusted:
        raise ForeignCaError(
            f"refusing {recovered.origin}: the API server at {address}:{API_PORT} presents a "
            "certificate not signed by the recovered kube-ca, so this state belongs to another "
            "cluster (or an older CA); nothing was promoted. Choose another source or entry"
        )
    return f"the API server at {address}:{API_PORT} presents a certificate of its kube-ca"


NODE_CA_PATH = "/etc/kubernetes/ssl/kube-ca.pem"  # where RKE's cert deployer puts it


def state_targets(rkestate: bytes, default_user: str) -> list[NodeTarget]:
    """Where and as whom to log in to each node the state names."""
    nodes = _rke_config(rkestate).get("nodes") or []
    return [
        NodeTarget(n["address"], int(n.get("port") or 22), n.get("user") or default_user)
        for n in nodes
    ]


def check_nodes_ca(recovered: Recovered, access: NodeAccess, default_user: str) -> str:
    """Prove the recovered CA is the one the nodes hold: every node that can be read must keep
    it as its kube-ca.pem (ForeignCaError naming those that do not); nodes that cannot be read
    are named in the result, since the API server's check stands for them."""
    ca, foreign, unread = recovered.ca, [], []
    targets = state_targets(recovered.rkestate, default_user)
    for target in targets:
        try:
            status, out, err = run_command(target, access, f"cat {node_path(NODE_CA_PATH)}")
        except NodeCommandError as exc:
            unread.append(f"{target.address}: {exc}")
            continue
        try:
            if status != 0:
                raise ValueError(err or f"exit status {status}")
            if not same_certificate(out.decode(errors="replace"), ca):
                foreign.append(target.address)
        except ValueError as exc:  # missing, or not a certificate
            unread.append(f"{target.address}: {NODE_CA_PATH} unreadable ({exc})")
    if foreign:
        raise ForeignCaError(
            f"refusing {recovered.origin}: node(s) {', '.join(foreign)} keep another kube-ca in "
            f"{NODE_CA_PATH}, so this state is not theirs; nothing was promoted"
        )
    checked = len(targets) - len(unread)
    text = f"{checked} of {len(targets)} nodes keep its kube-ca"
    return text + (f" (not read: {'; '.join(unread)})" if unread else "")


# --- what to promote ---------------------------------------------------------------------------


def files_to_restore(cluster: ClusterState, recovered: Recovered) -> dict[str, bytes]:
    """What the recovery writes: each RKE file that is missing, broken or of another CA, and
    each other file the source has and the cluster lacks. A present, complete cluster.rkestate
    of the live CA is kept (it may be newer than the copy)."""
    ca = recovered.ca
    wanted: dict[str, bytes] = {}
    current = _read(cluster.path(RKESTATE))
    if not (is_rkestate(current) and same_certificate(state_ca(current), ca)):
        wanted[RKESTATE] = recovered.rkestate
    kubeconfig = recovered.kubeconfig()
    present = _read(cluster.path(KUBECONFIG))
    if kubeconfig and not (is_kubeconfig(present) and same_certificate(kubeconfig_ca(present), ca)):
        wanted[KUBECONFIG] = kubeconfig
    for name, data in recovered.donor.items():
        try:
            present = _read(cluster.path(name))
        except ValueError:  # not a file name the volume's layout knows: left in the source
            continue
        if name != KUBECONFIG and not _VALID.get(name, bool)(present):
            wanted[name] = data
    return wanted
