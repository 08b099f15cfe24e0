"""The state volume: each cluster's RKE files, status, history, staging and lock.

Layout and rules: docs/contracts.md, "State on the volume". RKE state is never deleted
or rolled back: the only removals are staging directories after promotion and history beyond the
limit. Every write is atomic (see ``cluster_mgmt.atomic``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cluster_mgmt.atomic import (
    DIR_MODE,
    FILE_MODE,
    atomic_write,
    discard_dir,
    fsync_dir,
    make_private_dirs,
    remove_debris,
    write_dir,
)
from cluster_mgmt.errors import RefusedError, StateError
from cluster_mgmt.identity import ENVIRONMENT, ENVIRONMENTS_DIR, NAME, ClusterId, clusters_dir
from cluster_mgmt.phases import Phase
from cluster_mgmt.state_files import is_kubeconfig, is_rkestate, is_yaml_mapping, load_json
from cluster_mgmt.volume_marker import (
    VolumeError,
    VolumeMarker,
    check_marker,
    read_marker,
    write_marker,
)

__all__ = [
    "FILES",
    "PHASES",
    "ClusterBusyError",
    "ClusterNotFoundError",
    "ClusterState",
    "Promotion",
    "StateError",
    "StateMissingError",
    "StateVolume",
    "Status",
    "VolumeError",
    "atomic_write",
]

PHASES = tuple(Phase)

CLUSTER_YML = "cluster.yml"
RKESTATE = "cluster.rkestate"
KUBECONFIG = "kube_config_cluster.yml"
CUSTOMER_KUBECONFIG = "customer_kube_config.yml"
KNOWN_HOSTS = "known_hosts"
STATUS = "status.json"
HEALTH = "health.json"
SNAPSHOTS = "snapshots.json"  # etcd snapshots taken through the service (cluster_mgmt.snapshots)
FILES = (
    CLUSTER_YML,
    RKESTATE,
    KUBECONFIG,
    CUSTOMER_KUBECONFIG,
    KNOWN_HOSTS,
    STATUS,
    HEALTH,
    SNAPSHOTS,
)
RKE_FILES = (RKESTATE, KUBECONFIG, CLUSTER_YML)  # staged for RKE; promoted in this order
RESOURCES = "resources"
HISTORY = "history"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
REJECTED_SUFFIX = "-rejected"
PROMOTED_SUFFIX = "-promoted"

_LABEL = NAME.body  # operations and cluster names alike are DNS-1123 labels
_OPERATION = re.compile(_LABEL)
_RESOURCE = re.compile(r"resources/([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)\.yaml")
_STAMP = r"\d{8}T\d{6}\.\d{6}Z"
_STAMP_RE = re.compile(_STAMP)
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_STAGING = re.compile(rf"{re.escape(STAGING_PREFIX)}{_STAMP}-({_LABEL})")
POLICY_SUFFIX = "-policy"
POLICY_DECISION = "policy-decision.json"
UNSNAPSHOTTED = (STATUS, HEALTH, SNAPSHOTS)  # what changes without the cluster's state changing
RECOVER_FLOW = "recover-cluster-state"


class ClusterNotFoundError(StateError):
    """The volume holds no directory for the cluster (never created, or archived)."""


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


class StateLostError(StateMissingError, RefusedError):
    """Another record says the cluster is live, but the volume holds no state for it: refused,
    and nothing is recorded, so that record (the API's witness) stays as it was."""


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


_VALIDATORS: dict[str, Callable[[bytes], bool]] = {
    RKESTATE: is_rkestate,
    KUBECONFIG: is_kubeconfig,
    CLUSTER_YML: is_yaml_mapping,
}


def _check_environment(environment: str) -> str:
    if not isinstance(environment, str) or not ENVIRONMENT.matches(environment):
        raise ValueError(f"invalid environment {environment!r}: {ENVIRONMENT.fix}")
    return environment


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.matches(name):
        raise ValueError(f"invalid cluster name {name!r}: {NAME.fix}")
    return name


def _check_operation(operation: str) -> str:
    if not isinstance(operation, str) or not _OPERATION.fullmatch(operation):
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
    """One cluster's directory ``<root>/environments/<env>/clusters/<name>``.

    Only a provision creates the directory (``lock(create=True)``); everything else requires
    it and fails with ClusterNotFoundError, so no operation can leave a phantom behind.
    """

    FILES = FILES

    def __init__(self, volume: StateVolume, environment: str, name: str) -> None:
        self.environment = _check_environment(environment)
        self.name = _check_name(name)
        self.id = ClusterId(environment, name)
        self.dir = volume.root / self.id.state_dir
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

    def create(self) -> None:
        """Create the cluster's directory (0700, and missing parents): for a provision only."""
        make_private_dirs(self.dir)

    def _require_dir(self) -> None:
        if not self.dir.is_dir():
            raise ClusterNotFoundError(
                f"no cluster {self.environment}/{self.name} on the state volume "
                f"{self._volume.root}; check the environment and name"
            )

    def _subdir(self, name: str) -> Path:
        """``<cluster dir>/<name>``, created (0700) if missing; never creates the cluster dir."""
        self._require_dir()
        path = self.dir / name
        try:
            os.mkdir(path, DIR_MODE)  # never makes parents: the cluster dir must still be there
            os.chmod(path, DIR_MODE)
            fsync_dir(self.dir)
        except FileExistsError:
            pass
        except FileNotFoundError:
            self._require_dir()  # archived meanwhile: ClusterNotFoundError
            raise
        return path

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
        self._require_dir()
        if path.parent != self.dir:
            self._subdir(path.parent.name)
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
        base = previous or Status(Phase.PENDING, None, None, "RKE wrote state", _now_iso())
        self._save_status(replace(base, updated_at=_now_iso(), rke_state_written=True))

    def _save_status(self, status: Status) -> None:
        self._require_dir()
        atomic_write(self.dir / STATUS, status.to_json(), FILE_MODE)

    # -- lock --------------------------------------------------------------------------------

    @contextmanager
    def lock(self, operation: str, flow_run_id: str, *, create: bool = False) -> Iterator[None]:
        """Hold the cluster's exclusive flock; recover an interrupted run on acquisition.

        ``create`` (provision only) makes the cluster directory first; otherwise a missing
        directory is ClusterNotFoundError. The flock is checked against the directory it
        protects after it is taken: a directory archived (and perhaps re-created) meanwhile
        is never locked by the inode of the old one. Raises ClusterBusyError, naming the
        holder, if another operation holds it.
        """
        for _ in range(3):
            if create:
                self.create()
            fd = self._open_lock_file()
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _busy_error(fd) from None
                try:
                    if not self._lock_file_is(fd):
                        continue  # the directory moved under us: take the lock again
                    record = {
                        "operation": operation,
                        "flow_run_id": flow_run_id,
                        "pid": os.getpid(),
                        "since": _now_iso(),
                    }
                    _write_lock_record(fd, record)
                    self.recover_interrupted()
                    yield
                    return
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        raise StateError(
            f"the directory of cluster {self.environment}/{self.name} keeps changing while its "
            "lock is taken; another process is moving it. Check what runs against the volume"
        )

    def _open_lock_file(self) -> int:
        try:
            fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except FileNotFoundError:
            self._require_dir()
            raise
        os.fchmod(fd, FILE_MODE)
        return fd

    def _lock_file_is(self, fd: int) -> bool:
        """True if ``fd`` is still the lock file of this cluster's directory; else, if the
        directory is gone, ClusterNotFoundError."""
        held = os.fstat(fd)
        try:
            current = os.stat(self.dir / LOCK, follow_symlinks=False)
        except FileNotFoundError:
            self._require_dir()
            return False
        return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)

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
        if data is not None and is_rkestate(data):
            return
        if data is None:
            problem = "is missing"
        elif not data.strip():
            problem = "is empty"
        else:
            problem = "is not complete RKE state holding the cluster's CA"
        raise StateMissingError(self._missing_state_message(problem))

    def _missing_state_message(self, problem: str) -> str:
        copy = self._newest_history_state()
        from_history = (
            f"source history (newest copy {copy.parent.name})"
            if copy is not None
            else "source history (no history copy exists)"
        )
        return (
            f"refusing to run rke for cluster {self.environment}/{self.name}: RKE already wrote "
            f"state for it but {self.dir / RKESTATE} {problem}, and rke would mint a new CA. "
            f"Recover the state first with `cluster-mgmt recover {self.environment} {self.name} "
            f"--source ...` (flow {RECOVER_FLOW}): {from_history}, archive, in-cluster (RKE's "
            "copy, the Secret kube-system/full-cluster-state, read with the admin kubeconfig) "
            "or rke-util (`rke util get-state-file`); it checks the CA against the live "
            "cluster first. Then retry."
        )

    def known_elsewhere_message(self, witness: str) -> str:
        """Why a cluster that `witness` knows, but whose directory is missing or empty, is
        refused, with every way back to its state."""
        archived = self._volume.archived(self.environment, self.name)
        archive = (
            f"archive (newest {archived[-1].name})" if archived else "archive (none on this volume)"
        )
        resource = self.id.event_resource_id
        return (
            f"refusing to provision {self.environment}/{self.name}: {witness}, but the state "
            f"volume {self._volume.root} holds no state for it ({self.dir} is missing or empty). "
            "Running rke now would mint a new CA for a live cluster. Recover its state first "
            f"with `cluster-mgmt recover {self.environment} {self.name} --source ...` (flow "
            f"{RECOVER_FLOW}): {archive}, in-cluster (RKE's copy, the Secret "
            "kube-system/full-cluster-state, read with an admin kubeconfig from history or the "
            "archive) or rke-util (`rke util get-state-file`), or restore a backup of the "
            "volume. If the cluster is really gone (its nodes wiped), record that first: "
            f"`prefect event emit cluster.deleted --resource-id {resource}`"
        )

    # -- history -----------------------------------------------------------------------------

    def snapshot_history(self, operation: str) -> Path | None:
        """Copy the present state files to ``history/<stamp>-<operation>/`` and prune.

        Returns None when the newest snapshot already holds the same files.
        """
        return self._snapshot(_check_operation(operation))

    def record_decision(self, operation: str, decision: dict[str, Any]) -> Path:
        """Keep a policy decision as ``history/<stamp>-<operation>-policy/policy-decision.json``.

        Needs no lock (so a denial never makes a concurrent legitimate run fail as busy) and
        never creates the cluster's directory. Decisions are pruned apart from state
        snapshots: no number of them ever evicts a copy of the cluster's state.
        """
        body = json.dumps(decision, indent=2, sort_keys=True).encode() + b"\n"
        label = f"{_check_operation(operation)}{POLICY_SUFFIX}"
        path = self._write_history(label, {POLICY_DECISION: body})
        self._prune(self._decision_entries())
        return path

    def _snapshot(self, label: str) -> Path | None:
        files = self._snapshot_files()
        newest = next(reversed(self._snapshot_entries()), None)
        if newest is not None and _same_files(newest, files):
            return None
        path = self._write_history(label, files)
        self._prune(self._snapshot_entries(), keep=self._newest_history_state())
        return path

    def _snapshot_files(self) -> dict[str, bytes]:
        files = {n: d for n in FILES if (d := _read_bytes(self.dir / n)) is not None}
        for resource in self.resource_names():
            rel = f"{RESOURCES}/{resource}.yaml"
            if (data := _read_bytes(self.dir / rel)) is not None:
                files[rel] = data
        return files

    def _write_history(self, label: str, files: dict[str, bytes]) -> Path:
        history = self._subdir(HISTORY)
        for _ in range(5):
            final = _unique_path(history, lambda stamp: f"{stamp}-{label}")
            try:
                # Without the lock (a policy decision) the cluster may be archived at any
                # instant: write only into the history directory that is still there.
                return write_dir(final, files, make_parents=False)
            except FileNotFoundError:
                self._require_dir()  # archived meanwhile: ClusterNotFoundError
                raise
            except OSError as exc:  # a concurrent writer took the same stamp
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        raise StateError(f"could not write a history entry under {history}; retry")

    def _history_entries(self) -> list[Path]:
        """Complete history directories, oldest first."""
        if not self.history_dir.is_dir():
            return []
        return sorted(
            p for p in self.history_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def _snapshot_entries(self) -> list[Path]:
        """History entries that copy the cluster's state (not policy decisions), oldest first."""
        return [p for p in self._history_entries() if not p.name.endswith(POLICY_SUFFIX)]

    def history_copies(self) -> list[Path]:
        """History entries holding copies of the cluster's files (not decisions), oldest first."""
        return self._snapshot_entries()

    def _decision_entries(self) -> list[Path]:
        return [p for p in self._history_entries() if p.name.endswith(POLICY_SUFFIX)]

    def _newest_history_state(self) -> Path | None:
        """The newest history copy of cluster.rkestate that is valid RKE state."""
        for entry in reversed(self._snapshot_entries()):
            candidate = entry / RKESTATE
            if not entry.name.endswith(REJECTED_SUFFIX) and is_rkestate(
                _read_bytes(candidate) or b""
            ):
                return candidate
        return None

    def newest_history_copy(self, filename: str) -> Path | None:
        """The newest copy of a state file in history, or None."""
        for entry in reversed(self._snapshot_entries()):
            if (entry / _check_filename(filename)).is_file():
                return entry / filename
        return None

    def append_known_hosts(self, lines: list[str] | tuple[str, ...]) -> None:
        """Record host keys accepted under accept-new; they are enforced from now on."""
        if lines:
            known = self.read_text(KNOWN_HOSTS) or ""
            self.write_text(KNOWN_HOSTS, known + "".join(f"{line}\n" for line in lines))

    def _prune(self, entries: list[Path], keep: Path | None = None) -> None:
        """Drop the oldest of `entries` beyond the limit, never the entry holding `keep`."""
        for entry in entries[: max(0, len(entries) - self._volume.history_limit)]:
            if keep is None or entry != keep.parent:
                with suppress(FileNotFoundError):  # a concurrent pruner was first
                    discard_dir(entry)

    # -- staging and promotion ---------------------------------------------------------------

    @contextmanager
    def staging(self, operation: str) -> Iterator[Path]:
        """Snapshot history, then yield a staging copy of RKE's files for RKE to run in.

        On exit, after success or an exception, what RKE left is promoted and the staging
        directory removed; exceptions propagate after promotion. The result is kept in
        ``last_promotion``. If the promotion itself fails, the staging directory stays for
        the next run (``recover_interrupted``) and the error propagates.
        """
        _check_operation(operation)
        self._require_dir()
        self._snapshot(operation)
        files = {n: d for n in RKE_FILES if (d := _read_bytes(self.dir / n)) is not None}
        stage = _unique_path(self.dir, lambda stamp: f"{STAGING_PREFIX}{stamp}-{operation}")
        write_dir(stage, files)
        try:
            yield stage
        finally:
            self.last_promotion = self._promote_and_discard(stage)

    def promote(self, staging: Path, *, checkpoint: bool = False) -> Promotion:
        """Promote the RKE files in ``staging`` that are complete; keep rejected ones in history.

        Files missing from staging are left alone in the cluster directory: state is never
        deleted. Safe to repeat (a promotion interrupted by a kill is simply redone). A
        ``checkpoint`` during the run (RKE just said it wrote a file) promotes what is
        complete and ignores the rest: RKE may be rewriting it. A final promotion also
        keeps a copy of the promoted state in history, so a fresh cluster's CA never lives
        in one file only.
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
        if not checkpoint:
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
        self._require_dir()
        parent = self._volume.archive_root / self.environment
        make_private_dirs(parent)
        target = _unique_path(parent, lambda stamp: f"{self.name}-{stamp}")
        os.rename(self.dir, target)
        fsync_dir(self.dir.parent)
        fsync_dir(parent)
        return target


def _same_files(entry: Path, files: dict[str, bytes]) -> bool:
    """True if history `entry` holds exactly `files`, status and health aside."""
    wanted = {n: d for n, d in files.items() if n not in UNSNAPSHOTTED}
    held = {
        str(p.relative_to(entry)): p.read_bytes()
        for p in entry.rglob("*")
        if p.is_file() and p.name not in UNSNAPSHOTTED
    }
    return held == wanted


def _write_lock_record(fd: int, record: dict[str, Any]) -> None:
    """Overwrite the lock file's holder record in place (the flock is tied to its inode)."""
    data = json.dumps(record).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _busy_error(fd: int, attempts: int = 50) -> ClusterBusyError:
    """ClusterBusyError from the holder's record (retried while the holder is writing it)."""
    for _ in range(attempts):
        record = load_json(os.pread(fd, 65536, 0))
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
    """The volume holding every cluster's state, ``<root>/environments/...`` and archive.

    ``ebs_volume_id`` and ``volume_id`` are what the block expects the volume's marker to say.
    """

    def __init__(
        self,
        root: Path | str,
        history_limit: int = 20,
        *,
        ebs_volume_id: str | None = None,
        volume_id: str | None = None,
    ) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {history_limit}")
        self.root = Path(root).expanduser().absolute()
        self.history_limit = history_limit
        self.ebs_volume_id = ebs_volume_id
        self.volume_id = volume_id

    def __repr__(self) -> str:
        return f"StateVolume({str(self.root)!r}, history_limit={self.history_limit})"

    @property
    def archive_root(self) -> Path:
        return self.root / "archive"

    def initialise(self) -> VolumeMarker:
        """Make the root (0700) a state volume: write its marker, once. Idempotent.

        The only place that creates the root. An existing marker is kept (and checked).
        """
        if self.root.exists() and not self.root.is_dir():
            raise VolumeError(f"state volume root {self.root} exists and is not a directory")
        make_private_dirs(self.root)
        marker = read_marker(self.root)
        if marker is None:
            marker = VolumeMarker.new(self.ebs_volume_id)
            write_marker(self.root, marker)
        check_marker(self.root, marker, ebs_volume_id=self.ebs_volume_id, volume_id=None)
        return marker

    def check_usable(self) -> VolumeMarker:
        """The volume's marker, once the root proved to be the expected, writable volume.

        Never creates anything: a missing root, or one without a marker, is VolumeError.
        """
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise VolumeError(
                f"state volume root {self.root} {what}: the volume is not mounted, or "
                "cluster-state-volume.root is wrong. Mount the volume there, or initialise a "
                f"new, empty volume with `cluster-mgmt init --state-root {self.root}`"
            )
        marker = read_marker(self.root)
        if marker is None:
            raise VolumeError(
                f"state volume root {self.root} has no volume marker: it is not an initialised "
                "state volume (an unmounted mount point looks like this). Mount the volume "
                f"there; only for a new, empty volume run `cluster-mgmt init --state-root "
                f"{self.root}`"
            )
        check_marker(self.root, marker, ebs_volume_id=self.ebs_volume_id, volume_id=self.volume_id)
        self._probe_writable()
        return marker

    def _probe_writable(self) -> None:
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.root)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise VolumeError(
                f"state volume root {self.root} is not writable: {reason}; mount the volume "
                "read-write or fix cluster-state-volume.root"
            ) from exc

    def cluster(self, environment: str, name: str) -> ClusterState:
        """The state of one cluster (which need not exist yet)."""
        return ClusterState(self, environment, name)

    def clusters(self, environment: str | None = None) -> list[ClusterState]:
        """Every cluster with state on the volume (archived ones excluded)."""
        if environment is not None:
            envs = [_check_environment(environment)]
        else:
            base = self.root / ENVIRONMENTS_DIR
            envs = sorted(p.name for p in base.glob("*") if ENVIRONMENT.matches(p.name))
        found = []
        for env in envs:
            folder = self.root / clusters_dir(env)
            names = sorted(p.name for p in folder.glob("*") if NAME.matches(p.name))
            found.extend(c for n in names if (c := self.cluster(env, n)).exists())
        return found

    def archived(self, environment: str, name: str) -> list[Path]:
        """Archived directories of a cluster, oldest first."""
        folder = self.archive_root / _check_environment(environment)
        pattern = re.compile(rf"{re.escape(_check_name(name))}-{_STAMP}")
        return sorted(p for p in folder.glob(f"{name}-*") if pattern.fullmatch(p.name))
