"""The state volume: each cluster's RKE files, status, history, staging and lock.

Layout and rules are the contract in design.md, "State on the volume". RKE state is never deleted
or rolled back: the only removals are staging directories after promotion and history beyond the
limit. Every write is atomic (see ``cluster_mgmt.atomic``).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from cluster_mgmt.atomic import (
    FILE_MODE,
    atomic_write,
    discard_dir,
    fsync_dir,
    make_private_dirs,
    remove_debris,
    write_dir,
)

__all__ = [
    "FILES",
    "PHASES",
    "ClusterBusyError",
    "ClusterState",
    "Promotion",
    "StateError",
    "StateMissingError",
    "StateVolume",
    "Status",
    "atomic_write",
]

PHASES = (
    "PENDING",
    "PROVISIONING",
    "CONFIGURING",
    "READY",
    "UPDATING",
    "DELETING",
    "DELETED",
    "FAILED",
)

CLUSTER_YML = "cluster.yml"
RKESTATE = "cluster.rkestate"
KUBECONFIG = "kube_config_cluster.yml"
CUSTOMER_KUBECONFIG = "customer_kube_config.yml"
KNOWN_HOSTS = "known_hosts"
STATUS = "status.json"
HEALTH = "health.json"
FILES = (CLUSTER_YML, RKESTATE, KUBECONFIG, CUSTOMER_KUBECONFIG, KNOWN_HOSTS, STATUS, HEALTH)
RKE_FILES = (RKESTATE, KUBECONFIG, CLUSTER_YML)  # staged for RKE; promoted in this order
RESOURCES = "resources"
HISTORY = "history"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
REJECTED_SUFFIX = "-rejected"
PROMOTED_SUFFIX = "-promoted"

_ENVIRONMENT = re.compile(r"[a-z0-9]{1,20}")
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,38}[a-z0-9])?"  # DNS-1123 label, at most 40 characters
_NAME = re.compile(_LABEL)
_RESOURCE = re.compile(r"resources/([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)\.yaml")
_STAMP = r"\d{8}T\d{6}\.\d{6}Z"
_STAMP_RE = re.compile(_STAMP)
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_STAGING = re.compile(rf"{re.escape(STAGING_PREFIX)}{_STAMP}-({_LABEL})")
_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----.*-----END [A-Z0-9 ]+-----\s*", re.DOTALL)


POLICY_DECISION = "policy-decision.json"


class StateError(Exception):
    """Something is wrong with the state volume; the message says what and what to do."""


class ClusterBusyError(StateError):
    """Another operation holds the cluster's lock."""

    def __init__(
        self, operation: str, flow_run_id: str, pid: int | None = None, since: str | None = None
    ) -> None:
        super().__init__(f"operation {operation} in progress (flow run {flow_run_id})")
        self.operation, self.flow_run_id, self.pid, self.since = operation, flow_run_id, pid, since

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.operation, self.flow_run_id, self.pid, self.since)


class StateMissingError(StateError):
    """RKE already wrote state for the cluster but its cluster.rkestate is missing or unreadable."""


@dataclass(frozen=True)
class Promotion:
    """What ``ClusterState.promote`` did with the files RKE left in a staging directory."""

    promoted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Status:
    """The record in status.json."""

    phase: str
    operation: str | None
    flow_run_id: str | None
    message: str
    updated_at: str
    spec_hash: str | None = None
    rke_state_written: bool = False

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}; use one of {', '.join(PHASES)}")

    def to_json(self) -> str:
        """Serialise exactly this record's fields."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Status:
        """Parse a status record; ValueError if it is not one."""
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("status record is not a JSON object")  # noqa: TRY004
        known = {f.name for f in fields(cls)}  # fields added by newer releases are ignored
        try:
            return cls(**{k: v for k, v in doc.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"incomplete status record: {exc}") from exc


def utc_stamp(moment: datetime | None = None) -> str:
    """A sortable UTC stamp to the microsecond, e.g. ``20261125T110203.123456Z``."""
    return (moment or datetime.now(UTC)).strftime(STAMP_FORMAT)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _unique_path(parent: Path, make_name: Callable[[str], str]) -> Path:
    """``parent / make_name(stamp)`` with a stamp later than any stamp already in ``parent``.

    Normally that is now; if an entry is as new (or the clock went back), 1 µs after the newest,
    so stamps stay unique and names sort in creation order.
    """
    moment = datetime.now(UTC)
    taken = [m.group(0) for p in parent.glob("*") if (m := _STAMP_RE.search(p.name))]
    if taken:
        newest = datetime.strptime(max(taken), STAMP_FORMAT).replace(tzinfo=UTC)
        moment = max(moment, newest + timedelta(microseconds=1))
    return parent / make_name(utc_stamp(moment))


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _load_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _load_yaml(data: bytes) -> Any:
    try:
        return yaml.safe_load(data)
    except (yaml.YAMLError, ValueError, RecursionError):
        return None


def _is_rkestate(data: bytes) -> bool:
    """RKE state that still holds the cluster's CA: without it, rke would mint a new one."""
    doc = _load_json(data)
    if not isinstance(doc, dict):
        return False
    for key in ("desiredState", "currentState"):
        bundle = (
            doc.get(key, {}).get("certificatesBundle") if isinstance(doc.get(key), dict) else None
        )
        ca = bundle.get("kube-ca") if isinstance(bundle, dict) else None
        if isinstance(ca, dict) and "BEGIN CERTIFICATE" in str(ca.get("certificatePEM", "")):
            return True
    return False


def _is_yaml_mapping(data: bytes) -> bool:
    return isinstance(_load_yaml(data), dict)


def _entries(doc: dict[str, Any], key: str, inner: str) -> list[dict[str, Any]] | None:
    """The ``inner`` mappings of a kubeconfig list such as ``clusters[].cluster``."""
    items = doc.get(key)
    if not isinstance(items, list) or not items:
        return None
    found = [item.get(inner) for item in items if isinstance(item, dict)]
    if len(found) != len(items) or not all(isinstance(x, dict) and x for x in found):
        return None
    return found


def _intact_data(value: Any) -> bool:
    """A kubeconfig ``*-data`` field: strict base64, and whole if it holds PEM."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        return False
    return not raw.startswith(b"-----BEGIN") or _PEM.fullmatch(raw) is not None


def _is_kubeconfig(data: bytes) -> bool:
    """A complete kubeconfig: clusters with a server, users with credentials, intact data."""
    doc = _load_yaml(data)
    if not isinstance(doc, dict):
        return False
    clusters, users = _entries(doc, "clusters", "cluster"), _entries(doc, "users", "user")
    if clusters is None or users is None or not all(c.get("server") for c in clusters):
        return False
    return all(
        _intact_data(value)
        for entry in clusters + users
        for key, value in entry.items()
        if key.endswith("-data")
    )


_VALIDATORS: dict[str, Callable[[bytes], bool]] = {
    RKESTATE: _is_rkestate,
    KUBECONFIG: _is_kubeconfig,
    CLUSTER_YML: _is_yaml_mapping,
}


def _check_environment(environment: str) -> str:
    if not isinstance(environment, str) or not _ENVIRONMENT.fullmatch(environment):
        raise ValueError(
            f"invalid environment {environment!r}: use 1-20 lowercase letters and digits"
        )
    return environment


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"invalid cluster name {name!r}: use a DNS-1123 label of at most 40 chars")
    return name


def _check_operation(operation: str) -> str:
    if not isinstance(operation, str) or not _NAME.fullmatch(operation):
        raise ValueError(
            f"invalid operation name {operation!r}: it names a directory, use a DNS-1123 label"
        )
    return operation


def _check_filename(filename: str) -> str:
    if filename in FILES or _RESOURCE.fullmatch(filename):
        return filename
    raise ValueError(
        f"unknown state file {filename!r}: use one of {', '.join(FILES)} "
        "or resources/<dns-label>.yaml"
    )


class ClusterState:
    """One cluster's directory ``<root>/environments/<env>/clusters/<name>``."""

    FILES = FILES

    def __init__(self, volume: StateVolume, environment: str, name: str) -> None:
        self.environment = _check_environment(environment)
        self.name = _check_name(name)
        self.dir = volume.root / "environments" / environment / "clusters" / name
        self._volume = volume
        self.last_promotion: Promotion | None = None

    def __repr__(self) -> str:
        return f"ClusterState({self.environment!r}, {self.name!r}, dir={str(self.dir)!r})"

    @property
    def history_dir(self) -> Path:
        return self.dir / HISTORY

    def path(self, filename: str) -> Path:
        """Absolute path of a known state file (see ``FILES``) or ``resources/<name>.yaml``."""
        return self.dir / _check_filename(filename)

    def exists(self) -> bool:
        """True if the volume holds any state file for this cluster."""
        return any((self.dir / name).exists() for name in FILES)

    def ensure_dir(self) -> None:
        """Create the cluster directory and missing parents, each 0700."""
        make_private_dirs(self.dir)

    # -- files -------------------------------------------------------------------------------

    def read_text(self, filename: str) -> str | None:
        """Contents of a state file, or None if it does not exist."""
        data = _read_bytes(self.path(filename))
        return None if data is None else data.decode()

    def write_text(self, filename: str, text: str) -> None:
        """Atomically write a state file (0600). RKE's files must be complete and parse."""
        path = self.path(filename)
        data = text.encode()
        validator = _VALIDATORS.get(filename)
        if validator is not None and not validator(data):
            raise ValueError(f"refusing to write {path}: the content is not a valid {filename}")
        make_private_dirs(path.parent)
        atomic_write(path, data, FILE_MODE)

    def resource_names(self) -> list[str]:
        """Names of the managed resources recorded under ``resources/``."""
        folder = self.dir / RESOURCES
        if not folder.is_dir():
            return []
        names = (p.name for p in folder.iterdir() if p.is_file())
        return sorted(m.group(1) for n in names if (m := _RESOURCE.fullmatch(f"{RESOURCES}/{n}")))

    # -- status ------------------------------------------------------------------------------

    def read_status(self) -> Status | None:
        """The status record, None if there is none yet."""
        path = self.dir / STATUS
        data = _read_bytes(path)
        if data is None:
            return None
        try:
            return Status.from_json(data)
        except ValueError as exc:
            raise StateError(
                f"{path} is not a valid status record ({exc}); restore it from the newest copy "
                f"under {self.history_dir} or move it aside so the next operation rewrites it"
            ) from exc

    def write_status(
        self,
        phase: str,
        operation: str | None,
        flow_run_id: str | None,
        message: str,
        spec_hash: str | None = None,
    ) -> Status:
        """Record a new status; ``spec_hash`` None keeps the previous one, the RKE flag sticks."""
        previous = self.read_status()
        status = Status(
            phase=phase,
            operation=operation,
            flow_run_id=flow_run_id,
            message=message,
            updated_at=_now_iso(),
            spec_hash=spec_hash if spec_hash is not None else getattr(previous, "spec_hash", None),
            rke_state_written=previous is not None and previous.rke_state_written,
        )
        self._save_status(status)
        return status

    def mark_rke_state_written(self) -> None:
        """Record for good that RKE has written state for this cluster."""
        previous = self.read_status()
        if previous is not None and previous.rke_state_written:
            return
        base = previous or Status("PENDING", None, None, "RKE wrote state", _now_iso())
        self._save_status(replace(base, updated_at=_now_iso(), rke_state_written=True))

    def _save_status(self, status: Status) -> None:
        self.ensure_dir()
        atomic_write(self.dir / STATUS, status.to_json(), FILE_MODE)

    # -- lock --------------------------------------------------------------------------------

    @contextmanager
    def lock(self, operation: str, flow_run_id: str) -> Iterator[None]:
        """Hold the cluster's exclusive flock; recover an interrupted run on acquisition.

        Raises ClusterBusyError, naming the holder, if another operation holds it.
        """
        self.ensure_dir()
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy_error(fd) from None
            try:
                record = {
                    "operation": operation,
                    "flow_run_id": flow_run_id,
                    "pid": os.getpid(),
                    "since": _now_iso(),
                }
                _write_lock_record(fd, record)
                self.recover_interrupted()
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- RKE state protection ----------------------------------------------------------------

    def rke_state_written(self) -> bool:
        """True once RKE has written state here (then a new CA must never be minted)."""
        status = self.read_status()
        return (
            (status is not None and status.rke_state_written)
            or (self.dir / KUBECONFIG).exists()
            or (self.dir / RKESTATE).exists()  # only a valid one is ever promoted here
            or self._newest_history_state() is not None
        )

    def ensure_state_intact(self) -> None:
        """Raise StateMissingError if RKE wrote state before but cluster.rkestate is unusable."""
        if not self.rke_state_written():
            return
        data = _read_bytes(self.dir / RKESTATE)
        if data is not None and _is_rkestate(data):
            return
        if data is None:
            problem = "is missing"
        elif not data.strip():
            problem = "is empty"
        else:
            problem = 'is not RKE state (a JSON object with "desiredState" or "currentState")'
        raise StateMissingError(self._missing_state_message(problem))

    def _missing_state_message(self, problem: str) -> str:
        copy = self._newest_history_state()
        from_history = (
            f"copy the newest history copy {copy} to {self.dir / RKESTATE} (mode 0600)"
            if copy is not None
            else "no history copy exists"
        )
        return (
            f"refusing to run rke for cluster {self.environment}/{self.name}: RKE already wrote "
            f"state for it but {self.dir / RKESTATE} {problem}, and rke would mint a new CA. "
            f"Recover the state first: {from_history}; or read RKE's in-cluster copy, the Secret "
            f"kube-system/full-cluster-state, with the admin kubeconfig {self.dir / KUBECONFIG} "
            f"(`rke util get-state-file --config cluster.yml` in {self.dir}). Then retry."
        )

    # -- history -----------------------------------------------------------------------------

    def snapshot_history(self, operation: str) -> Path:
        """Copy the present state files to ``history/<stamp>-<operation>/`` and prune."""
        return self._snapshot(_check_operation(operation))

    def record_decision(self, operation: str, decision: dict[str, Any]) -> Path:
        """Keep a policy decision as ``history/<stamp>-<operation>-policy/policy-decision.json``."""
        body = json.dumps(decision, indent=2, sort_keys=True).encode() + b"\n"
        path = self._write_history(f"{_check_operation(operation)}-policy", {POLICY_DECISION: body})
        self._prune_history()
        return path

    def _snapshot(self, label: str) -> Path:
        files = {n: d for n in FILES if (d := _read_bytes(self.dir / n)) is not None}
        for resource in self.resource_names():
            rel = f"{RESOURCES}/{resource}.yaml"
            if (data := _read_bytes(self.dir / rel)) is not None:
                files[rel] = data
        path = self._write_history(label, files)
        self._prune_history()
        return path

    def _write_history(self, label: str, files: dict[str, bytes]) -> Path:
        make_private_dirs(self.history_dir)
        final = _unique_path(self.history_dir, lambda stamp: f"{stamp}-{label}")
        return write_dir(final, files)

    def _history_entries(self) -> list[Path]:
        """Complete history directories, oldest first."""
        if not self.history_dir.is_dir():
            return []
        return sorted(
            p for p in self.history_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def _newest_history_state(self) -> Path | None:
        """The newest history copy of cluster.rkestate that is valid RKE state."""
        for entry in reversed(self._history_entries()):
            candidate = entry / RKESTATE
            if not entry.name.endswith(REJECTED_SUFFIX) and _is_rkestate(
                _read_bytes(candidate) or b""
            ):
                return candidate
        return None

    def _prune_history(self) -> None:
        """Drop the oldest entries beyond the limit, but never the newest valid RKE state."""
        entries = self._history_entries()
        excess = entries[: max(0, len(entries) - self._volume.history_limit)]
        if not excess:
            return
        newest_state = self._newest_history_state()
        for entry in excess:
            if newest_state is None or entry != newest_state.parent:
                discard_dir(entry)

    # -- staging and promotion ---------------------------------------------------------------

    @contextmanager
    def staging(self, operation: str) -> Iterator[Path]:
        """Snapshot history, then yield a staging copy of RKE's files for RKE to run in.

        On exit, after success or an exception, what RKE left is promoted and the staging
        directory removed; exceptions propagate after promotion. The result is kept in
        ``last_promotion``.
        """
        _check_operation(operation)
        self.ensure_dir()
        self._snapshot(operation)
        files = {n: d for n in RKE_FILES if (d := _read_bytes(self.dir / n)) is not None}
        stage = _unique_path(self.dir, lambda stamp: f"{STAGING_PREFIX}{stamp}-{operation}")
        write_dir(stage, files)
        try:
            yield stage
        finally:
            self.last_promotion = self._promote_and_discard(stage)

    def promote(self, staging: Path, *, checkpoint: bool = False) -> Promotion:
        """Promote the RKE files in ``staging`` that parse; keep rejected ones in history.

        Files missing from staging are left alone in the cluster directory: state is never
        deleted. Safe to repeat (a promotion interrupted by a kill is simply redone). A
        ``checkpoint`` during the run (RKE just said it wrote a file) promotes what parses
        and ignores the rest: RKE may be rewriting it.
        """
        staging = Path(staging)
        match = _STAGING.fullmatch(staging.name)
        if staging.parent != self.dir or match is None:
            raise ValueError(f"{staging} is not a staging directory of {self.dir}")
        operation = match.group(1)
        staged = {n: d for n in RKE_FILES if (d := _read_bytes(staging / n)) is not None}
        rejected = {n: d for n, d in staged.items() if not _VALIDATORS[n](d)}
        if rejected and not checkpoint:
            self._write_history(f"{operation}{REJECTED_SUFFIX}", rejected)
        if RKESTATE in staged and RKESTATE not in rejected:
            self.mark_rke_state_written()
        promoted = []
        for name, data in staged.items():
            if name not in rejected and data != _read_bytes(self.dir / name):
                atomic_write(self.dir / name, data, FILE_MODE)
                promoted.append(name)
        if promoted and not checkpoint:
            self._snapshot(f"{operation}{PROMOTED_SUFFIX}")
        return Promotion(promoted=promoted, rejected=[] if checkpoint else list(rejected))

    def _promote_and_discard(self, staging: Path) -> Promotion:
        promotion = self.promote(staging)
        discard_dir(staging)
        return promotion

    def recover_interrupted(self) -> list[Promotion]:
        """Promote and remove staging directories a killed run left; clear half-written debris.

        Call it only while holding ``lock()`` (which does so on acquisition).
        """
        for folder in (self.dir, self.history_dir, self.dir / RESOURCES):
            remove_debris(folder)
        if not self.dir.is_dir():
            return []
        leftovers = sorted(p for p in self.dir.iterdir() if _STAGING.fullmatch(p.name))
        return [self._promote_and_discard(stage) for stage in leftovers]

    # -- teardown ----------------------------------------------------------------------------

    def archive(self) -> Path:
        """Move the whole directory to ``<root>/archive/<env>/<name>-<stamp>`` and return it."""
        if not self.dir.is_dir():
            raise StateError(f"nothing to archive: {self.dir} does not exist")
        parent = self._volume.archive_root / self.environment
        make_private_dirs(parent)
        target = _unique_path(parent, lambda stamp: f"{self.name}-{stamp}")
        os.rename(self.dir, target)
        fsync_dir(self.dir.parent)
        fsync_dir(parent)
        return target


def _write_lock_record(fd: int, record: dict[str, Any]) -> None:
    """Overwrite the lock file's holder record in place (the flock is tied to its inode)."""
    data = json.dumps(record).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _busy_error(fd: int, attempts: int = 50) -> ClusterBusyError:
    """ClusterBusyError from the holder's record (retried while the holder is writing it)."""
    for _ in range(attempts):
        record = _load_json(os.pread(fd, 65536, 0))
        if isinstance(record, dict) and {"operation", "flow_run_id"} <= record.keys():
            return ClusterBusyError(
                str(record["operation"]),
                str(record["flow_run_id"]),
                record.get("pid"),
                record.get("since"),
            )
        time.sleep(0.01)
    return ClusterBusyError("unknown", "unknown")


class StateVolume:
    """The volume holding every cluster's state, ``<root>/environments/...`` and archive."""

    def __init__(self, root: Path | str, history_limit: int = 20) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {history_limit}")
        self.root = Path(root).expanduser().absolute()
        self.history_limit = history_limit

    def __repr__(self) -> str:
        return f"StateVolume({str(self.root)!r}, history_limit={self.history_limit})"

    @property
    def archive_root(self) -> Path:
        return self.root / "archive"

    def check_usable(self) -> None:
        """Create the root (0700) if missing and prove it writable; StateError if not."""
        hint = "mount the volume or fix cluster-state-volume.root"
        if self.root.exists() and not self.root.is_dir():
            raise StateError(f"state volume root {self.root} is not a directory; {hint}")
        try:
            make_private_dirs(self.root)
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.root)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StateError(
                f"state volume root {self.root} is not writable: {reason}; {hint}"
            ) from exc

    def cluster(self, environment: str, name: str) -> ClusterState:
        """The state of one cluster (which need not exist yet)."""
        return ClusterState(self, environment, name)

    def clusters(self, environment: str | None = None) -> list[ClusterState]:
        """Every cluster with state on the volume (archived ones excluded)."""
        base = self.root / "environments"
        if environment is not None:
            envs = [_check_environment(environment)]
        else:
            envs = sorted(p.name for p in base.glob("*") if _ENVIRONMENT.fullmatch(p.name))
        found = []
        for env in envs:
            folder = base / env / "clusters"
            names = sorted(p.name for p in folder.glob("*") if _NAME.fullmatch(p.name))
            found.extend(c for n in names if (c := self.cluster(env, n)).exists())
        return found
