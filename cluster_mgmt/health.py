"""Cluster health: probe a cluster's Kubernetes API, judge it, damp verdicts, keep health.json.

One probe of one cluster opens ONE TLS connection with the admin kubeconfig's credentials (loaded
from memory, never written to disk) and asks, in turn, `/readyz?verbose` (etcd included),
`/version`, the nodes and the kube-system pods; each request has its own time limit and a bound
on the size of the answer. The certificates in `cluster.rkestate` are judged without the network.

Verdicts: `Healthy`; `Degraded` (the API answers but something is wrong: a failed readiness
check, a node not Ready, a crash-looping or not running system pod, a certificate expired or
about to expire); `Unreachable` (refused, timeout, TLS failure, 401/403, garbage, an answer too
large, or credentials that cannot be used). A cluster whose phase is not READY is in an operation
(or failed one): it is reported with its phase and not judged.

Damping: the verdict in health.json changes only once the same new verdict was observed in
`sweeps_to_change` consecutive sweeps; until then it is recorded as the pending candidate. The
first verdict a cluster ever gets is taken at once (there is nothing to flap from). The monitor
takes no lock: health.json is written atomically and by the monitor only.

A sharded sweep names itself (`sweep_id`): each record says which sweep wrote it, so a shard
that is retried after a crash judges only the clusters its first attempt did not reach, and a
verdict never counts one sweep twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import ssl
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import httpx
import yaml
from cryptography import x509

from cluster_mgmt.atomic import FILE_MODE, atomic_write
from cluster_mgmt.errors import ClusterMgmtError, StateError
from cluster_mgmt.phases import Phase
from cluster_mgmt.state import ClusterState
from cluster_mgmt.state_files import load_json

_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster

HEALTH = "health.json"
RKESTATE = "cluster.rkestate"
KUBECONFIG = "kube_config_cluster.yml"
MAX_STATE_BYTES = 16 * 1024 * 1024  # an rkestate or kubeconfig larger than this is not one
MAX_REASONS = 20  # per verdict, so a broken 100-node cluster stays a readable record


class Verdict(StrEnum):
    """A cluster's health verdict (contract: `cluster.health.<verdict lower-case>` events)."""

    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    UNREACHABLE = "Unreachable"


@dataclass(frozen=True)
class HealthSettings:
    """How a sweep probes and judges; every limit has a safe default."""

    probe_timeout: float = 5.0  # seconds for one request, answer included
    connect_timeout: float = 3.0  # seconds for TCP and the TLS handshake
    concurrency: int = 200  # clusters probed at once (one connection each)
    expiry_warning_days: int = 30  # a certificate ending sooner makes the cluster Degraded
    sweeps_to_change: int = 2  # consecutive sweeps that must agree before a verdict changes
    max_small_bytes: int = 64 * 1024  # /readyz, /version
    max_list_bytes: int = 8 * 1024 * 1024  # nodes, pods

    def __post_init__(self) -> None:
        for name in ("probe_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("concurrency", "sweeps_to_change", "max_small_bytes", "max_list_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.expiry_warning_days < 0:
            raise ValueError(f"expiry_warning_days must be >= 0, got {self.expiry_warning_days}")


@dataclass
class Observation:
    """What one probe of one cluster found. `verdict` None: not judged (see `phase`)."""

    environment: str
    name: str
    phase: str
    verdict: Verdict | None = None
    reasons: list[str] = field(default_factory=list)
    kubernetes_version: str | None = None
    nodes_ready: int | None = None
    nodes_total: int | None = None
    first_certificate_expiry: str | None = None  # ISO 8601
    checked_at: str = ""


@dataclass
class HealthRecord:
    """The content of health.json."""

    verdict: str
    reasons: list[str]
    since: str
    checked_at: str
    previous: dict[str, Any] | None = None  # {verdict, reasons, since, until}
    candidate: dict[str, Any] | None = None  # {verdict, reasons, seen, first_seen}
    kubernetes_version: str | None = None
    nodes_ready: int | None = None
    nodes_total: int | None = None
    first_certificate_expiry: str | None = None
    sweep: str | None = None  # the sharded sweep that wrote this record
    changed: bool = False  # whether that write changed the verdict

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> HealthRecord | None:
        """The record, or None if `data` is not one (a corrupt file starts afresh)."""
        doc = load_json(data if isinstance(data, bytes) else data.encode())
        if not isinstance(doc, dict) or doc.get("verdict") not in tuple(Verdict):
            return None
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        try:
            return cls(**known)
        except TypeError:
            return None


@dataclass(frozen=True)
class Transition:
    """A verdict that changed in this sweep (from None for a cluster's first verdict)."""

    environment: str
    name: str
    verdict: str
    previous: str | None
    reasons: list[str]
    since: str

    @property
    def event(self) -> str:
        return f"cluster.health.{self.verdict.lower()}"


class ProbeError(ClusterMgmtError):
    """The cluster cannot be judged through its API: it is Unreachable for this reason."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


# -- certificates (no network) -----------------------------------------------------------------


def certificate_expiries(rkestate: bytes) -> dict[str, datetime | None]:
    """Each certificate's end of validity in an rkestate, by name (None: it cannot be read).

    The current state's bundle is what the nodes run; the desired state's is used only when
    there is no current one. ValueError if the file holds no readable certificate bundle.
    """
    doc = load_json(rkestate)
    if not isinstance(doc, dict):
        raise ValueError("cluster.rkestate is not JSON")  # noqa: TRY004
    bundle = None
    for key in ("currentState", "desiredState"):
        state = doc.get(key)
        if isinstance(state, dict) and isinstance(state.get("certificatesBundle"), dict):
            bundle = state["certificatesBundle"]
            break
    if not bundle:
        raise ValueError("cluster.rkestate holds no certificatesBundle")
    expiries: dict[str, datetime | None] = {}
    for name in sorted(bundle):
        entry = bundle[name]
        pem = entry.get("certificatePEM") if isinstance(entry, dict) else None
        if not pem or not isinstance(pem, str):
            continue
        with warnings.catch_warnings():  # RKE's CA has serial number 0
            warnings.simplefilter("ignore")
            try:
                expiries[name] = x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc
            except ValueError:
                expiries[name] = None
    return expiries


def certificate_findings(
    rkestate: bytes, now: datetime, warning_days: int
) -> tuple[datetime | None, list[str]]:
    """The first certificate expiry in an rkestate and reasons for those expired or expiring.

    ValueError if the file holds no readable certificate bundle (see certificate_expiries).
    """
    first: datetime | None = None
    reasons = []
    horizon = now + timedelta(days=warning_days)
    for name, end in certificate_expiries(rkestate).items():
        if end is None:
            reasons.append(f"certificate {name} in cluster.rkestate cannot be read")
            continue
        first = end if first is None or end < first else first
        if end <= now:
            reasons.append(f"certificate {name} expired on {end:%Y-%m-%d} (checked {now:%Y-%m-%d})")
        elif end <= horizon:
            days = (end - now).days
            reasons.append(f"certificate {name} expires on {end:%Y-%m-%d} (in {days} days)")
    return first, reasons


# -- credentials --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The API server and credentials of a kubeconfig's current context (never logged)."""

    server: str
    ca_pem: bytes
    cert_pem: bytes = b""
    key_pem: bytes = b""
    token: str = ""

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r})"


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"the admin kubeconfig has no {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the admin kubeconfig's {what} is not base64") from None


def credentials_from_kubeconfig(data: bytes) -> Credentials:
    """The current context's server, CA and client credentials; ValueError saying what is wrong."""
    try:
        doc = yaml.load(data, Loader=_YamlLoader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise ValueError("the admin kubeconfig is not a YAML mapping")  # noqa: TRY004

    def named(key: str, name: Any) -> dict:
        for item in doc.get(key) or []:
            if isinstance(item, dict) and item.get("name") == name:
                inner = item.get(key[:-1])
                if isinstance(inner, dict):
                    return inner
        raise ValueError(f"the admin kubeconfig has no {key[:-1]} {name!r}")

    context = named("contexts", doc.get("current-context"))
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user"))
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise ValueError("the admin kubeconfig's server is not an https:// URL")
    ca = _b64(cluster.get("certificate-authority-data"), "certificate-authority-data")
    if user.get("client-certificate-data") or user.get("client-key-data"):
        cert = _b64(user.get("client-certificate-data"), "client-certificate-data")
        key = _b64(user.get("client-key-data"), "client-key-data")
        return Credentials(server.rstrip("/"), ca, cert, key)
    token = user.get("token")
    if isinstance(token, str) and token:
        return Credentials(server.rstrip("/"), ca, token=token)
    raise ValueError("the admin kubeconfig's user has neither a client certificate nor a token")


def ssl_context(creds: Credentials) -> ssl.SSLContext:
    """Verify the server against the cluster CA; present the client certificate, from memory.

    `ssl` loads a certificate chain only from a path: an anonymous memory file (memfd, never on
    disk) is handed to it through /proc and closed at once.
    """
    try:
        context = ssl.create_default_context(cadata=creds.ca_pem.decode("ascii", "strict"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the admin kubeconfig's CA cannot be loaded: {exc}") from None
    if creds.cert_pem:
        fd = os.memfd_create("kube-client", os.MFD_CLOEXEC)
        try:
            view = memoryview(creds.cert_pem.rstrip(b"\n") + b"\n" + creds.key_pem)
            while view:
                view = view[os.write(fd, view) :]
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise ValueError(f"the admin kubeconfig's client certificate/key: {reason}") from None
        finally:
            os.close(fd)
    return context


# -- the probes ---------------------------------------------------------------------------------


def _transport_reason(exc: BaseException, timeout: float) -> str:
    """A one-line reason for a failed request, without anything secret."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"no answer within {timeout:g}s"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: {cause.verify_message or cause.reason} (is it the cluster's CA?)"
        if isinstance(cause, ssl.SSLError):
            return f"TLS: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return f"garbage answer ({exc})" if str(exc) else "garbage answer"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Api:
    """The requests of one probe, over one client (one connection), each bounded."""

    def __init__(self, client: httpx.AsyncClient, settings: HealthSettings) -> None:
        self.client, self.settings = client, settings

    async def get(self, path: str, limit: int) -> tuple[int, bytes]:
        timeout = self.settings.probe_timeout
        try:
            async with asyncio.timeout(timeout):
                async with self.client.stream("GET", path) as response:
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise ProbeError(f"GET {path} announced {declared} bytes, over {limit}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise ProbeError(f"GET {path} answered more than {limit} bytes")
                    status = response.status_code
        except ProbeError:
            raise
        except (httpx.HTTPError, TimeoutError, OSError, ssl.SSLError) as exc:
            raise ProbeError(f"GET {path}: {_transport_reason(exc, timeout)}") from None
        if status in (401, 403):
            word = "Unauthorized" if status == 401 else "Forbidden"
            raise ProbeError(
                f"GET {path}: {status} {word}: the admin kubeconfig's credentials are refused"
            )
        return status, bytes(body)

    async def get_json(self, path: str, limit: int) -> tuple[int, Any]:
        status, body = await self.get(path, limit)
        doc = load_json(body)
        if status == 200 and not isinstance(doc, dict):
            raise ProbeError(f"GET {path}: garbage answer (not a JSON object)")
        return status, doc


def _readyz(status: int, body: bytes) -> list[str]:
    if status == 200:
        return []
    text = body.decode("utf-8", "replace")
    failed = [line[3:].split(" ")[0] for line in text.splitlines() if line.startswith("[-]")]
    if failed:
        return [f"readyz: {', '.join(failed)} failed"]
    return [f"readyz answered {status}"]


def _node_findings(doc: dict) -> tuple[int, int, list[str]]:
    items = doc.get("items")
    if not isinstance(items, list):
        raise ProbeError("GET /api/v1/nodes: garbage answer (no items)")
    reasons, ready = [], 0
    for node in items:
        name = (node.get("metadata") or {}).get("name", "?") if isinstance(node, dict) else "?"
        conditions = ((node.get("status") or {}) if isinstance(node, dict) else {}).get(
            "conditions"
        ) or []
        cond = next((c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"), {})
        if cond.get("status") == "True":
            ready += 1
        else:
            why = cond.get("reason") or "no Ready condition"
            reasons.append(f"node {name} NotReady ({cond.get('status', 'Unknown')}: {why})")
    if not items:
        reasons.append("no nodes registered")
    return ready, len(items), reasons


def _pod_findings(doc: dict) -> list[str]:
    items = doc.get("items")
    if not isinstance(items, list):
        raise ProbeError("GET kube-system pods: garbage answer (no items)")
    reasons = []
    for pod in items:
        if not isinstance(pod, dict):
            continue
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        waiting = [
            ((c.get("state") or {}).get("waiting") or {}).get("reason")
            for c in status.get("containerStatuses") or []
            if isinstance(c, dict)
        ]
        if "CrashLoopBackOff" in waiting:
            reasons.append(f"pod kube-system/{name} is crash-looping")
        elif status.get("phase") not in ("Running", "Succeeded"):
            reasons.append(f"pod kube-system/{name} is {status.get('phase') or 'not running'}")
    return reasons


async def _probe_api(api: _Api, observation: Observation) -> list[str]:
    """The API's findings (Degraded reasons); ProbeError when it cannot be judged."""
    small, large = api.settings.max_small_bytes, api.settings.max_list_bytes
    status, body = await api.get("/readyz?verbose", small)
    reasons = _readyz(status, body)
    status, version = await api.get_json("/version", small)
    if status == 200:
        observation.kubernetes_version = str(version.get("gitVersion") or "") or None
    else:
        reasons.append(f"GET /version answered {status}")
    status, nodes = await api.get_json("/api/v1/nodes", large)
    if status == 200:
        ready, total, found = _node_findings(nodes)
        observation.nodes_ready, observation.nodes_total = ready, total
        reasons += found
    else:
        reasons.append(f"GET /api/v1/nodes answered {status}")
    status, pods = await api.get_json("/api/v1/namespaces/kube-system/pods", large)
    reasons += _pod_findings(pods) if status == 200 else [f"kube-system pods answered {status}"]
    return reasons


def _read_small(cluster: ClusterState, filename: str) -> bytes | None:
    path = cluster.path(filename)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"{filename} is larger than {MAX_STATE_BYTES} bytes")
    return data


def _judge(reasons_down: list[str], reasons_degraded: list[str]) -> tuple[Verdict, list[str]]:
    if reasons_down:
        return Verdict.UNREACHABLE, (reasons_down + reasons_degraded)[:MAX_REASONS]
    if reasons_degraded:
        return Verdict.DEGRADED, reasons_degraded[:MAX_REASONS]
    return Verdict.HEALTHY, []


@dataclass
class _Plan:
    """What the files say before the network is asked: findings so far and the TLS set-up."""

    down: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    creds: Credentials | None = None
    context: ssl.SSLContext | None = None


def _prepare(
    cluster: ClusterState, settings: HealthSettings, observation: Observation, now: datetime
) -> _Plan | None:
    """Read status, rkestate and kubeconfig; None when the cluster is not to be judged.

    Runs in a worker thread: loading the client key (OpenSSL) releases the GIL.
    """
    try:
        status = cluster.read_status()
    except StateError as exc:
        observation.reasons = [f"status.json unreadable: {exc}"]
        return None
    if status is None:
        observation.reasons = ["no status.json yet"]
        return None
    observation.phase = str(status.phase)
    if status.phase != Phase.READY:
        observation.reasons = [f"not judged during phase {status.phase}"]
        return None
    plan = _Plan()
    try:
        rkestate = _read_small(cluster, RKESTATE)
        if rkestate is None:
            plan.degraded.append("cluster.rkestate is missing")
        else:
            first, found = certificate_findings(rkestate, now, settings.expiry_warning_days)
            observation.first_certificate_expiry = _iso(first) if first else None
            plan.degraded += found
    except (ValueError, OSError) as exc:
        plan.degraded.append(f"cluster.rkestate unreadable: {exc}")
    try:
        kubeconfig = _read_small(cluster, KUBECONFIG)
        if kubeconfig is None:
            raise ValueError("the admin kubeconfig kube_config_cluster.yml is missing")
        plan.creds = credentials_from_kubeconfig(kubeconfig)
        plan.context = ssl_context(plan.creds)
    except (ValueError, OSError) as exc:
        plan.down.append(str(exc))
    return plan


async def probe_cluster(
    cluster: ClusterState,
    settings: HealthSettings | None = None,
    semaphore: asyncio.Semaphore | None = None,
    now: datetime | None = None,
) -> Observation:
    """Probe and judge one cluster (without damping or writing anything)."""
    settings = settings or HealthSettings()
    now = now or _now()
    observation = Observation(cluster.environment, cluster.name, "unknown", checked_at=_iso(now))
    async with semaphore or asyncio.Semaphore(1):
        plan = await asyncio.to_thread(_prepare, cluster, settings, observation, now)
        if plan is None:
            return observation
        if plan.creds is not None and plan.context is not None:
            headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
            if plan.creds.token:
                headers["Authorization"] = f"Bearer {plan.creds.token}"
            async with httpx.AsyncClient(
                base_url=plan.creds.server,
                verify=plan.context,
                headers=headers,
                timeout=httpx.Timeout(settings.probe_timeout, connect=settings.connect_timeout),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                trust_env=False,
                follow_redirects=False,
            ) as client:
                try:
                    plan.degraded += await _probe_api(_Api(client, settings), observation)
                except ProbeError as exc:
                    plan.down.append(str(exc))
    observation.verdict, observation.reasons = _judge(plan.down, plan.degraded)
    return observation


async def probe_clusters(
    clusters: Iterable[ClusterState],
    settings: HealthSettings | None = None,
    on_result: Callable[[Observation], Awaitable[None] | None] | None = None,
) -> list[Observation]:
    """Probe every cluster concurrently (at most `settings.concurrency` at once), in order."""
    settings = settings or HealthSettings()
    semaphore = asyncio.Semaphore(settings.concurrency)
    now = _now()

    async def one(cluster: ClusterState) -> Observation:
        try:
            observation = await probe_cluster(cluster, settings, semaphore, now)
        except Exception as exc:  # noqa: BLE001 - one cluster never stops the sweep
            observation = Observation(
                cluster.environment,
                cluster.name,
                "unknown",
                Verdict.UNREACHABLE,
                [f"probe failed: {type(exc).__name__}: {exc}"],
                checked_at=_iso(now),
            )
        if on_result is not None:
            pending = on_result(observation)
            if pending is not None:
                await pending
        return observation

    return list(await asyncio.gather(*(one(c) for c in clusters)))


# -- damping and health.json --------------------------------------------------------------------


def damp(
    record: HealthRecord | None, observation: Observation, sweeps_to_change: int
) -> tuple[HealthRecord, bool]:
    """The new record after `observation` (which must be judged), and whether the verdict
    changed. A new verdict needs `sweeps_to_change` consecutive sightings; the first ever
    verdict is taken at once."""
    if observation.verdict is None:
        raise ValueError("an observation that was not judged cannot change a verdict")
    seen_at = observation.checked_at
    facts = {
        "checked_at": seen_at,
        "kubernetes_version": observation.kubernetes_version,
        "nodes_ready": observation.nodes_ready,
        "nodes_total": observation.nodes_total,
        "first_certificate_expiry": observation.first_certificate_expiry,
    }
    verdict, reasons = str(observation.verdict), list(observation.reasons)
    if record is None:
        return HealthRecord(verdict=verdict, reasons=reasons, since=seen_at, **facts), True
    if verdict == record.verdict:
        return replace(record, reasons=reasons, candidate=None, **facts), False
    candidate = record.candidate if (record.candidate or {}).get("verdict") == verdict else None
    seen = int((candidate or {}).get("seen", 0)) + 1
    first_seen = (candidate or {}).get("first_seen", seen_at)
    if seen < sweeps_to_change:
        pending = {"verdict": verdict, "reasons": reasons, "seen": seen, "first_seen": first_seen}
        return replace(record, candidate=pending, **facts), False
    previous = {
        "verdict": record.verdict,
        "reasons": record.reasons,
        "since": record.since,
        "until": first_seen,
    }
    changed = HealthRecord(
        verdict=verdict, reasons=reasons, since=first_seen, previous=previous, **facts
    )
    return changed, True


def read_health(cluster: ClusterState) -> HealthRecord | None:
    """The cluster's health.json, None if there is none (or it is not a record)."""
    try:
        data = _read_small(cluster, HEALTH)
    except (ValueError, OSError):
        return None
    return None if data is None else HealthRecord.from_json(data)


def _transition(cluster: ClusterState, record: HealthRecord, previous: str | None) -> Transition:
    return Transition(
        cluster.environment, cluster.name, record.verdict, previous, record.reasons, record.since
    )


def record_observation(
    cluster: ClusterState,
    observation: Observation,
    sweeps_to_change: int,
    sweep_id: str | None = None,
) -> tuple[HealthRecord | None, Transition | None]:
    """Damp `observation` into the cluster's health.json (atomic write), marked with `sweep_id`.

    Returns the record and the transition, if the verdict changed. A cluster not judged keeps
    its record untouched; one whose directory vanished (torn down mid-sweep) gets nothing
    written and is reported as gone with (None, None).
    """
    if observation.verdict is None:
        return read_health(cluster), None
    before = read_health(cluster)
    record, changed = damp(before, observation, sweeps_to_change)
    record = replace(record, sweep=sweep_id, changed=changed)
    try:
        if not cluster.path("status.json").exists():
            return None, None
        atomic_write(cluster.path(HEALTH), record.to_json(), FILE_MODE)
    except FileNotFoundError:
        return None, None
    if not changed:
        return record, None
    return record, _transition(cluster, record, before.verdict if before else None)


def recorded_in(cluster: ClusterState, sweep_id: str) -> Outcome | None:
    """The outcome `sweep_id` already recorded for the cluster (an earlier attempt of the same
    shard got that far), None if it has not reached it. Its transition, if the verdict changed
    then, is given again: signalled at least once, even if that attempt died before."""
    record = read_health(cluster)
    if record is None or record.sweep != sweep_id:
        return None
    observed = (record.candidate or {}).get("verdict", record.verdict)
    observation = Observation(
        cluster.environment,
        cluster.name,
        str(Phase.READY),  # only READY clusters are judged
        Verdict(observed),
        list(record.reasons),
        record.kubernetes_version,
        record.nodes_ready,
        record.nodes_total,
        record.first_certificate_expiry,
        record.checked_at,
    )
    previous = (record.previous or {}).get("verdict")
    transition = _transition(cluster, record, previous) if record.changed else None
    return Outcome(observation, record, transition)


def days_until(moment: str | None, now: datetime | None = None) -> int | None:
    """Whole days from now to an ISO 8601 moment (negative once past)."""
    if not moment:
        return None
    delta = datetime.fromisoformat(moment) - (now or _now())
    return delta.days


# -- a sweep --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One cluster in a sweep: what was seen, what health.json now says, what changed."""

    observation: Observation
    record: HealthRecord | None
    transition: Transition | None

    @property
    def gone(self) -> bool:
        """Torn down (directory archived) while the sweep ran: nothing was written."""
        return self.observation.verdict is not None and self.record is None

    def row(self, now: datetime | None = None) -> dict[str, Any]:
        """The cluster's line in the fleet table (secret-free)."""
        obs, record = self.observation, self.record
        judged = obs.verdict is not None and record is not None
        if self.gone:
            verdict = "torn down during the sweep"
        elif judged:
            verdict = record.verdict
            if record.candidate:
                verdict += f" ({record.candidate['verdict']} seen {record.candidate['seen']}x)"
        else:
            verdict = "not judged"
        reasons = record.reasons if judged else obs.reasons
        nodes = f"{obs.nodes_ready}/{obs.nodes_total}" if obs.nodes_total is not None else "-"
        days = days_until(obs.first_certificate_expiry, now)
        return {
            "environment": obs.environment,
            "name": obs.name,
            "phase": obs.phase,
            "verdict": verdict,
            "since": record.since if judged else "-",
            "reasons": "; ".join(reasons) or "-",
            "kubernetes_version": obs.kubernetes_version or "-",
            "nodes_ready": nodes,
            "days_to_first_cert_expiry": "-" if days is None else days,
        }


async def sweep(
    clusters: Iterable[ClusterState],
    settings: HealthSettings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    sweep_id: str | None = None,
) -> list[Outcome]:
    """Probe every cluster, damp each verdict into its health.json; one cluster's trouble never
    stops the others. `on_progress(done, total)` is called after each cluster and must not
    block. With `sweep_id`, clusters already recorded by that sweep are not probed again."""
    settings = settings or HealthSettings()
    clusters = list(clusters)
    earlier: dict[tuple[str, str], Outcome] = {}
    if sweep_id is not None:
        found = await asyncio.gather(
            *(asyncio.to_thread(recorded_in, c, sweep_id) for c in clusters)
        )
        earlier = {(c.environment, c.name): o for c, o in zip(clusters, found, strict=True) if o}
    total, done = len(clusters), len(earlier)
    by_key = {(c.environment, c.name): c for c in clusters}
    recorded: dict[tuple[str, str], tuple[HealthRecord | None, Transition | None]] = {}

    async def record(observation: Observation) -> None:
        nonlocal done
        cluster = by_key[(observation.environment, observation.name)]
        key = (observation.environment, observation.name)
        try:
            recorded[key] = await asyncio.to_thread(
                record_observation, cluster, observation, settings.sweeps_to_change, sweep_id
            )
        except OSError as exc:
            observation.reasons.append(f"health.json not written: {exc.strerror or exc}")
            recorded[key] = (read_health(cluster), None)
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    todo = [c for c in clusters if (c.environment, c.name) not in earlier]
    observations = await probe_clusters(todo, settings, record)
    fresh = {
        (o.environment, o.name): Outcome(o, *recorded[(o.environment, o.name)])
        for o in observations
    }
    return [
        earlier.get((c.environment, c.name)) or fresh[(c.environment, c.name)] for c in clusters
    ]


def run_sweep(
    clusters: Iterable[ClusterState],
    settings: HealthSettings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    sweep_id: str | None = None,
) -> list[Outcome]:
    """`sweep` for synchronous callers."""
    return asyncio.run(sweep(clusters, settings, on_progress, sweep_id))
