"""Read-only commands on a node over SSH, with the host-key checks of the preflight.

Host keys are verified against known_hosts with the `reject` policy: a read-only check never
trusts a key it did not know. Paths on a node are prefixed with the optional environment
variable ``CLUSTER_MGMT_NODE_ROOT`` (empty in production, the node's root folder where nodes
keep their files elsewhere, as the lab's do), expanded by the node's shell.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paramiko

from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.hostkeys import HostKeyPolicy, load_private_key, parse_known_hosts
from cluster_mgmt.preflight import NodeTarget, _endpoint, _NodeFailure, _session, _Settings

NODE_ROOT_ENV = "CLUSTER_MGMT_NODE_ROOT"
"""Optional prefix of every path read on a node (set by the node's sshd, empty by default)."""


class NodeCommandError(ClusterMgmtError):
    """A node could not be reached, was not trusted, or its command did not finish."""


@dataclass(frozen=True)
class NodeAccess:
    """How to log in to a cluster's nodes: the key and the host keys trusted."""

    private_key: str
    known_hosts: str = ""
    recorded_known_hosts: str = ""
    connect_timeout: float = 10.0


def node_path(path: str) -> str:
    """A shell word for absolute `path` on the node, under ``$CLUSTER_MGMT_NODE_ROOT``."""
    return f'"${{{NODE_ROOT_ENV}:-}}"{shlex.quote(path)}'


def run_command(
    target: NodeTarget,
    access: NodeAccess,
    command: str,
    *,
    timeout: float = 60.0,
    max_bytes: int = 8 * 1024**3,
) -> tuple[int, bytes, str]:
    """Run `command` on the node; (exit status, stdout, stderr) within `timeout` seconds.

    Raises NodeCommandError (never with key material) if the node is unreachable, its host
    key is not trusted, the login fails, the command overruns or prints more than `max_bytes`.
    """
    settings = _Settings(
        pkey=load_private_key(access.private_key),
        trusted=parse_known_hosts(access.known_hosts, access.recorded_known_hosts),
        policy=HostKeyPolicy.REJECT,
        kubernetes_version="",
        ignore_docker_version=True,
        connect_timeout=access.connect_timeout,
        banner_timeout=access.connect_timeout,
        auth_timeout=access.connect_timeout,
        command_timeout=timeout,
    )
    where = _endpoint(target.address, target.port)
    try:
        with _session(target, settings, {}) as transport:
            return _exec(transport, where, command, timeout, max_bytes)
    except _NodeFailure as exc:
        raise NodeCommandError(exc.message) from None


def _exec(
    transport: paramiko.Transport, where: str, command: str, timeout: float, max_bytes: int
) -> tuple[int, bytes, str]:
    deadline = time.monotonic() + timeout
    too_slow = NodeCommandError(f"a command on {where} did not finish within {timeout:g}s")
    try:
        with transport.open_session(timeout=timeout) as channel:
            channel.settimeout(timeout)
            channel.exec_command(command)
            channel.shutdown_write()
            out = bytearray()
            while chunk := channel.recv(1 << 16):
                out += chunk
                if len(out) > max_bytes:
                    raise NodeCommandError(f"a command on {where} printed more than {max_bytes} B")
                if time.monotonic() > deadline:
                    raise too_slow
            err = channel.recv_stderr(4096).decode(errors="replace")
            if not channel.status_event.wait(max(deadline - time.monotonic(), 0)):
                raise too_slow
            return channel.exit_status, bytes(out), " ".join(err.split())[:300]
    except TimeoutError:
        raise too_slow from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise NodeCommandError(f"running a command on {where} failed ({exc})") from None


def first_answer(
    targets: Sequence[NodeTarget], access: NodeAccess, command: str, **kwargs: float
) -> tuple[NodeTarget, int, bytes, str]:
    """Run `command` on each target in turn until one can be asked; NodeCommandError, naming
    every node's reason, if none could."""
    reasons = []
    for target in targets:
        try:
            return (target, *run_command(target, access, command, **kwargs))
        except NodeCommandError as exc:
            reasons.append(str(exc))
    raise NodeCommandError("; ".join(reasons) or "no node to ask")
