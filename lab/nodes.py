"""Lab node hosts: one real OpenSSH sshd per node, each on its own loopback address.

Every node has its own host key, accepts one lab client key, and puts a stand-in `docker`
(see `lab.docker`) first on the SSH session's PATH. A node's "filesystem" is its root folder
(`LAB_NODE_ROOT` in the session, also exported as `CLUSTER_MGMT_NODE_ROOT`), where the docker
stand-in keeps what it reports.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

SSHD = "/usr/sbin/sshd"
DEFAULT_DOCKER_VERSION = "26.1.4"


def keygen(path: Path, comment: str) -> None:
    """Write a fresh ed25519 key pair at `path` and `path.pub`."""
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


def free_port(address: str) -> int:
    """A TCP port that is free on `address` right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass
class LabNode:
    """One node: an sshd on `address:port` that logs in `user` with the lab client key."""

    name: str
    address: str
    port: int
    user: str
    root: Path
    authorized_keys: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def sshd_log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def host_public_key(self) -> str:
        """`<type> <base64>` of the node's host key."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    @property
    def known_hosts_line(self) -> str:
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{host} {self.host_public_key}"

    @property
    def docker_version(self) -> str:
        return (self.root / "docker-version").read_text().strip()

    @docker_version.setter
    def docker_version(self, version: str) -> None:
        (self.root / "docker-version").write_text(version + "\n")

    def set_docker_running(self, running: bool) -> None:
        """Make the node's Docker daemon answer, or refuse as a stopped daemon does."""
        marker = self.root / "docker-stopped"
        if running:
            marker.unlink(missing_ok=True)
        else:
            marker.touch()

    def accepted_logins(self) -> int:
        """How many SSH logins this node's sshd has accepted so far."""
        if not self.sshd_log.exists():
            return 0
        return self.sshd_log.read_text().count("Accepted publickey")

    def connections(self) -> int:
        """How many TCP connections this node's sshd has seen so far."""
        if not self.sshd_log.exists():
            return 0
        return self.sshd_log.read_text().count("Connection from")

    def _config(self) -> Path:
        bin_dir, root = self.root / "bin", self.root
        path = f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}:{self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "AllowStreamLocalForwarding yes",
                    "LogLevel VERBOSE",
                    # CLUSTER_MGMT_NODE_ROOT: the root that node checks (teardown, recovery) prefix to paths.
                    f"SetEnv PATH={path} LAB_NODE_ROOT={self.root} CLUSTER_MGMT_NODE_ROOT={root}",
                    "",
                ]
            )
        )
        return config

    def _install_docker(self) -> None:
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        docker = bin_dir / "docker"
        docker.write_text(f'#!/bin/sh\nexec {sys.executable} -m lab.docker "$@"\n')
        docker.chmod(0o755)

    def start(self, timeout: float = 10.0) -> None:
        """Start sshd and wait until it accepts TCP connections."""
        if self.process and self.process.poll() is None:
            return
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir sshd insists on
        if not self.host_key.exists():
            keygen(self.host_key, f"lab-{self.name}")
        self._install_docker()
        log = self.sshd_log.open("a")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self._config())],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd for {self.name} exited: {self.sshd_log.read_text()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd for {self.name} did not listen on {self.address}:{self.port}")

    def stop(self) -> None:
        """Stop sshd (and every session it spawned)."""
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def rotate_host_key(self) -> None:
        """Give the node a new host key, as a reinstalled or impersonated host would have."""
        self.stop()
        keygen(self.host_key, f"lab-{self.name}-rotated")
        self.start()


class LabNodes:
    """A set of lab nodes and the client key that logs in to all of them.

    Use as a context manager: every sshd it started is stopped on exit.
    """

    def __init__(
        self,
        workdir: Path | str,
        count: int,
        *,
        first_address: int = 2,
        docker_version: str = DEFAULT_DOCKER_VERSION,
        user: str | None = None,
    ) -> None:
        if not 1 <= count <= 200 or not 2 <= first_address <= 254 - count:
            raise ValueError("lab nodes need addresses 127.0.0.2 .. 127.0.0.254")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_key_path = self.workdir / "client_ed25519"
        if not self.client_key_path.exists():
            keygen(self.client_key_path, "lab-client")
        authorized = self.workdir / "authorized_keys"
        shutil.copyfile(self.client_key_path.with_suffix(".pub"), authorized)
        self.user = user or getpass.getuser()
        self.nodes: list[LabNode] = []
        for i in range(count):
            address = f"127.0.0.{first_address + i}"
            root = self.workdir / f"node{i + 1}"
            root.mkdir(exist_ok=True)
            node = LabNode(
                name=f"node{i + 1}",
                address=address,
                port=free_port(address),
                user=self.user,
                root=root,
                authorized_keys=authorized,
            )
            node.docker_version = docker_version
            self.nodes.append(node)

    @property
    def client_private_key(self) -> str:
        return self.client_key_path.read_text()

    def known_hosts(self) -> str:
        """known_hosts text naming every node's host key."""
        return "".join(node.known_hosts_line + "\n" for node in self.nodes)

    def start(self) -> LabNodes:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
