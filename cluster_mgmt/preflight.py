"""SSH preflight: check every node before `rke up` touches any of them.

Per node, concurrently: TCP reachable, host key verified against known_hosts, login with the
node-ssh-access private key, and `docker version` answering with a version RKE accepts for the
chosen Kubernetes version. Nothing here decides what happens next: the caller gets a report.
Plain Python (paramiko), no Prefect. No key material ever reaches an error, a report or a row.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import paramiko

from cluster_mgmt.docker_versions import allowed_docker_versions, docker_version_allowed
from cluster_mgmt.hostkeys import (
    ACCEPTED_KEY_TYPES,
    HostKeyError,
    HostKeyPolicy,
    KnownKey,
    SshInputError,
    host_matches,
    known_hosts_name,
    load_private_key,
    parse_known_hosts,
    prefer_known_key_types,
    verify_host_key,
)

__all__ = [  # what flows, tasks, blocks and the CLI import from here
    "ACCEPTED_KEY_TYPES",
    "CommandResult",
    "HostKeyPolicy",
    "NodeReport",
    "NodeTarget",
    "PreflightError",
    "PreflightReport",
    "load_private_key",
    "preflight",
    "run_command",
]

DOCKER_VERSION_COMMAND = "docker version --format '{{.Server.Version}}'"
MAX_WORKERS = 32
_STDERR_LIMIT = 300
_OUTPUT_LIMIT = 64 * 1024
PreflightError = SshInputError  # bad preflight input (never a node failure: see the report)


@dataclass(frozen=True)
class NodeTarget:
    """A node to check: where sshd listens and whom to log in as."""

    address: str
    port: int
    user: str


@dataclass(frozen=True)
class NodeReport:
    """What preflight found on one node; `error` says what is wrong and what to do."""

    address: str
    port: int
    reachable: bool
    authenticated: bool
    docker_version: str | None
    host_key_fingerprint: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class PreflightReport:
    """Per-node results, plus known_hosts lines newly accepted under accept-new."""

    nodes: tuple[NodeReport, ...]
    accepted_host_keys: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return all(node.ok for node in self.nodes)

    @property
    def failures(self) -> tuple[NodeReport, ...]:
        return tuple(node for node in self.nodes if not node.ok)

    def rows(self) -> list[dict[str, Any]]:
        """Secret-free table rows, one per node, for an artifact."""
        return [
            {
                "node": _endpoint(n.address, n.port),
                "status": "ok" if n.ok else "failed",
                "reachable": n.reachable,
                "authenticated": n.authenticated,
                "docker_version": n.docker_version or "",
                "host_key": n.host_key_fingerprint or "",
                "error": n.error or "",
            }
            for n in self.nodes
        ]


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- one node ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    pkey: paramiko.PKey
    trusted: list[KnownKey]
    policy: HostKeyPolicy
    kubernetes_version: str
    ignore_docker_version: bool
    connect_timeout: float
    banner_timeout: float
    auth_timeout: float
    command_timeout: float


class _NodeFailure(Exception):
    def __init__(self, message: str, *, reachable: bool, authenticated: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.reachable = reachable
        self.authenticated = authenticated


def _trim(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _STDERR_LIMIT else flat[: _STDERR_LIMIT - 1] + "…"


def _check_node(target: NodeTarget, settings: _Settings) -> tuple[NodeReport, str | None]:
    """Check one node; returns its report and the known_hosts line it newly accepted, if any."""
    state: dict[str, Any] = {
        "reachable": False,
        "fingerprint": None,
        "docker": None,
        "accepted": None,
    }
    failure: _NodeFailure | None = None
    try:
        _run_checks(target, settings, state)
    except _NodeFailure as exc:
        failure = exc
    except Exception as exc:  # noqa: BLE001 - one odd node must not sink the others' checks
        failure = _NodeFailure(
            f"unexpected {type(exc).__name__} while checking "
            f"{_endpoint(target.address, target.port)}: {_trim(str(exc))}; see the worker log",
            reachable=state["reachable"],
        )
    report = NodeReport(
        address=target.address,
        port=target.port,
        reachable=failure.reachable if failure else True,
        authenticated=failure.authenticated if failure else True,
        docker_version=state["docker"],
        host_key_fingerprint=state["fingerprint"],
        error=failure.message if failure else None,
    )
    return report, state["accepted"]


def _run_checks(target: NodeTarget, s: _Settings, state: dict[str, Any]) -> None:
    where = _endpoint(target.address, target.port)
    with _session(target, s, state) as transport:
        status, out, err = _exec(transport, where, s.command_timeout)
        _check_docker(target, status, out, err, s, state)


@contextmanager
def _session(
    target: NodeTarget, s: _Settings, state: dict[str, Any]
) -> Iterator[paramiko.Transport]:
    """An authenticated SSH transport to `target`, its host key verified; records progress
    (`reachable`, `fingerprint`, `accepted`) in `state`."""
    sock = _connect(target, s.connect_timeout)
    state["reachable"] = True
    try:
        transport = paramiko.Transport(sock)
    except BaseException:
        sock.close()
        raise
    try:
        transport.banner_timeout = s.banner_timeout
        transport.handshake_timeout = s.connect_timeout
        transport.auth_timeout = s.auth_timeout
        name = known_hosts_name(target.address, target.port)
        known = [k for k in s.trusted if host_matches(k.patterns, name)]
        prefer_known_key_types(transport, [k for k in known if not k.revoked])
        _handshake(transport, _endpoint(target.address, target.port), s)
        server_key = transport.get_remote_server_key()
        state["fingerprint"] = server_key.fingerprint
        try:
            state["accepted"] = verify_host_key(
                target.address, target.port, server_key, known, s.policy
            )
        except HostKeyError as exc:
            raise _NodeFailure(str(exc), reachable=True) from None
        _authenticate(transport, target, s.pkey)
        yield transport
    finally:
        transport.close()
        sock.close()


def _connect(target: NodeTarget, timeout: float) -> socket.socket:
    where = _endpoint(target.address, target.port)
    try:
        return socket.create_connection((target.address, target.port), timeout=timeout)
    except TimeoutError:
        message = (
            f"TCP connection to {where} timed out after {timeout:g}s (connect timeout); check "
            f"that the node is up and port {target.port} is open from this worker"
        )
    except ConnectionRefusedError:
        message = (
            f"TCP connection to {where} was refused; check that sshd is running on the node "
            f"and listens on port {target.port}"
        )
    except OSError as exc:
        message = (
            f"cannot reach {where} ({exc.strerror or type(exc).__name__}); check the address "
            "and the network path from this worker"
        )
    raise _NodeFailure(message, reachable=False)


def _handshake(transport: paramiko.Transport, where: str, s: _Settings) -> None:
    started = time.monotonic()
    try:
        transport.start_client(timeout=s.connect_timeout)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        text = str(exc)
        if "SSH protocol banner" in text:
            timed_out = isinstance(exc.__context__, TimeoutError) or (
                time.monotonic() - started >= s.banner_timeout
            )
            if timed_out:
                message = (
                    f"no SSH banner from {where} within {s.banner_timeout:g}s (banner timeout); "
                    "check that this port is an sshd and the node is not overloaded"
                )
            else:
                message = (
                    f"{where} closed the connection before sending an SSH banner; check that this "
                    "port is an sshd that accepts connections from this worker"
                )
        else:
            message = (
                f"SSH handshake with {where} failed ({_trim(text) or type(exc).__name__}); "
                "check the node's sshd configuration"
            )
        raise _NodeFailure(message, reachable=True) from None
    if transport.host_key is None or not transport.is_active():
        raise _NodeFailure(
            f"SSH handshake with {where} did not finish within {s.connect_timeout:g}s "
            "(connect timeout); check the node's load and sshd",
            reachable=True,
        )


def _authenticate(transport: paramiko.Transport, target: NodeTarget, pkey: paramiko.PKey) -> None:
    who = f"{target.user}@{_endpoint(target.address, target.port)}"
    try:
        remaining = transport.auth_publickey(target.user, pkey)
    except paramiko.AuthenticationException as exc:
        if "timeout" in str(exc).lower():
            message = (
                f"authentication of {who} did not finish within {transport.auth_timeout:g}s "
                "(auth timeout); check the node's sshd (slow DNS or PAM)"
            )
        else:
            message = (
                f"authentication failed for {who}; check the node-ssh-access private key and "
                "the user's authorized_keys"
            )
        raise _NodeFailure(message, reachable=True) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise _NodeFailure(
            f"authentication of {who} failed ({_trim(str(exc)) or type(exc).__name__}); "
            "check the node's sshd",
            reachable=True,
        ) from None
    if remaining or not transport.is_authenticated():
        raise _NodeFailure(
            f"{who} demands further authentication ({', '.join(remaining)}) after the public "
            "key; allow public key login alone for this user",
            reachable=True,
        )


def _exec(
    transport: paramiko.Transport,
    where: str,
    timeout: float,
    command: str = DOCKER_VERSION_COMMAND,
    label: str = "docker version",
) -> tuple[int, str, str]:
    """Run `command` (named `label` in errors); (exit status, stdout, stderr) within `timeout`."""
    deadline = time.monotonic() + timeout
    too_slow = _NodeFailure(
        f"`{label}` on {where} did not finish within {timeout:g}s (command timeout); "
        "check the Docker daemon on the node",
        reachable=True,
        authenticated=True,
    )
    try:
        channel = transport.open_session(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if "timeout" in str(exc).lower():
            raise too_slow from None
        raise _NodeFailure(
            f"could not open an SSH session on {where} ({_trim(str(exc)) or type(exc).__name__}); "
            "check the node's sshd (MaxSessions)",
            reachable=True,
            authenticated=True,
        ) from None
    try:
        channel.settimeout(max(deadline - time.monotonic(), 0.001))
        channel.exec_command(command)
        channel.shutdown_write()
        out = _read_all(channel.recv)
        err = _read_all(channel.recv_stderr)
        if not channel.status_event.wait(max(deadline - time.monotonic(), 0)):
            raise too_slow
        return channel.exit_status, out, err
    except TimeoutError:
        raise too_slow from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise _NodeFailure(
            f"running `{label}` on {where} failed ({_trim(str(exc))}); check the node's sshd",
            reachable=True,
            authenticated=True,
        ) from None
    finally:
        channel.close()


def _read_all(recv: Any) -> str:
    chunks: list[bytes] = []
    size = 0
    while chunk := recv(32768):
        if size < _OUTPUT_LIMIT:
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks).decode(errors="replace")


def _check_docker(
    target: NodeTarget, status: int, out: str, err: str, s: _Settings, state: dict[str, Any]
) -> None:
    who = f"{target.user}@{_endpoint(target.address, target.port)}"
    if status != 0:
        detail = _trim(err) or _trim(out) or "no output"
        raise _NodeFailure(
            f"`docker version` failed on {who} (exit {status}): {detail}; start Docker on the "
            f"node and make sure {target.user} may run docker (docker group)",
            reachable=True,
            authenticated=True,
        )
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if not lines:
        raise _NodeFailure(
            f"`docker version` on {who} printed no server version; check the Docker daemon",
            reachable=True,
            authenticated=True,
        )
    version = lines[-1][:64]
    state["docker"] = version
    if s.ignore_docker_version or docker_version_allowed(s.kubernetes_version, version):
        return
    allowed = ", ".join(allowed_docker_versions(s.kubernetes_version))
    raise _NodeFailure(
        f"Docker {version} on {_endpoint(target.address, target.port)} is not supported by RKE "
        f"for Kubernetes {s.kubernetes_version} (allowed: {allowed}); install an allowed Docker "
        "version or set the rke-settings block's ignore_docker_version",
        reachable=True,
        authenticated=True,
    )


# --- all nodes ---------------------------------------------------------------------------------


def preflight(
    targets: Sequence[NodeTarget],
    *,
    private_key: str,
    known_hosts: str,
    recorded_known_hosts: str,
    policy: HostKeyPolicy,
    kubernetes_version: str,
    ignore_docker_version: bool,
    connect_timeout: float = 10.0,
    command_timeout: float = 30.0,
    banner_timeout: float | None = None,
    auth_timeout: float | None = None,
) -> PreflightReport:
    """Check every node concurrently and report; raises PreflightError only for bad inputs.

    Host keys are trusted from `known_hosts` (the block) plus `recorded_known_hosts` (the
    cluster's file). Banner and auth timeouts default to `connect_timeout`.
    """
    if not targets:
        raise PreflightError("no nodes to check")
    try:
        policy = HostKeyPolicy(policy)
    except ValueError:
        choices = ", ".join(p.value for p in HostKeyPolicy)
        raise PreflightError(f"unknown host_key_policy {policy!r}; use one of {choices}") from None
    timeouts = {
        "connect_timeout": connect_timeout,
        "command_timeout": command_timeout,
        "banner_timeout": connect_timeout if banner_timeout is None else banner_timeout,
        "auth_timeout": connect_timeout if auth_timeout is None else auth_timeout,
    }
    for label, value in timeouts.items():
        if not value > 0:
            raise PreflightError(f"{label} must be a positive number of seconds, got {value!r}")
    if not ignore_docker_version:
        try:
            allowed_docker_versions(kubernetes_version)
        except ValueError as exc:
            raise PreflightError(f"{exc}; or set ignore_docker_version") from None
    settings = _Settings(
        pkey=load_private_key(private_key),
        trusted=parse_known_hosts(known_hosts, recorded_known_hosts),
        policy=policy,
        kubernetes_version=kubernetes_version,
        ignore_docker_version=ignore_docker_version,
        **timeouts,
    )
    workers = min(len(targets), MAX_WORKERS)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preflight") as pool:
        results = list(pool.map(lambda t: _check_node(t, settings), targets))
    accepted = tuple(dict.fromkeys(line for _, line in results if line))
    return PreflightReport(nodes=tuple(r for r, _ in results), accepted_host_keys=accepted)


@dataclass(frozen=True)
class CommandResult:
    """A command's outcome on one node; `error` set when it could not run there."""

    address: str
    port: int
    reachable: bool
    exit_status: int | None
    stdout: str
    stderr: str
    error: str | None


def _run_command(
    target: NodeTarget, command: str, label: str, settings: _Settings
) -> CommandResult:
    state: dict[str, Any] = {"reachable": False, "fingerprint": None, "accepted": None}
    try:
        with _session(target, settings, state) as transport:
            where = _endpoint(target.address, target.port)
            status, out, err = _exec(transport, where, settings.command_timeout, command, label)
        return CommandResult(target.address, target.port, True, status, out, err, None)
    except _NodeFailure as exc:
        return CommandResult(target.address, target.port, exc.reachable, None, "", "", exc.message)
    except Exception as exc:  # noqa: BLE001 - one odd node must not sink the others
        message = f"unexpected {type(exc).__name__}: {_trim(str(exc))}; see the worker log"
        return CommandResult(target.address, target.port, state["reachable"], None, "", "", message)


def run_command(
    targets: Sequence[NodeTarget],
    command: str,
    label: str,
    *,
    private_key: str,
    known_hosts: str,
    recorded_known_hosts: str,
    connect_timeout: float = 10.0,
    command_timeout: float = 30.0,
) -> list[CommandResult]:
    """Run a shell `command` on every node concurrently, with preflight's access and host-key
    checks (policy `reject`: only keys already trusted); `label` names it in errors."""
    settings = _Settings(
        pkey=load_private_key(private_key),
        trusted=parse_known_hosts(known_hosts, recorded_known_hosts),
        policy=HostKeyPolicy.REJECT,
        kubernetes_version="",
        ignore_docker_version=True,
        connect_timeout=connect_timeout,
        banner_timeout=connect_timeout,
        auth_timeout=connect_timeout,
        command_timeout=command_timeout,
    )
    workers = max(1, min(len(targets), MAX_WORKERS))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssh-command") as pool:
        return list(pool.map(lambda t: _run_command(t, command, label, settings), targets))
