"""SSH to the nodes and the Docker calls rke makes there (hosts/tunnel.go, hosts/dialer.go, docker/).

rke talks to each node's Docker over an SSH-forwarded socket; the lab runs the node's `docker`
stand-in over SSH exec instead (batched with `docker lab-batch`). Host keys are not verified
(rke uses ssh.InsecureIgnoreHostKey); the key comes from the node's `ssh_key`, else its
`ssh_key_path` (`~/` expands via $HOME), or the agent with ssh_agent_auth.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab.rke import metadata
from lab.rke.errors import RkeError
from lab.rke.logrus import log

DOCKER_INFO_URL = 'Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/info"'
DAEMON_DOWN = "Cannot connect to the Docker daemon"


class TunnelError(Exception):
    pass


@dataclass
class Result:
    rc: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def _go_os_error(op: str, path: str, exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).strip()
    reason = reason[:1].lower() + reason[1:]
    return f"{op} {path}: {reason}"


def _home() -> str:
    return os.environ.get("HOME", "")


def read_key_file(path: str) -> str:
    if path.startswith("~/"):
        path = os.path.join(_home(), path[2:])
    try:
        with open(path) as fh:
            return fh.read()
    except IsADirectoryError:
        raise TunnelError(
            f"Error while reading SSH key file: read {path}: is a directory"
        ) from None
    except OSError as exc:
        raise TunnelError(
            f"Error while reading SSH key file: {_go_os_error('open', path, exc)}"
        ) from None


def _parse_key(text: str):
    import paramiko

    if not text.strip():
        raise TunnelError("ssh: no key found")
    for cls in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            raise TunnelError("ssh: this private key is passphrase protected") from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise TunnelError("ssh: no key found")


class _Ignore:
    def missing_host_key(self, client, hostname, key) -> None:
        return None


class Tunnel:
    """One SSH connection to a node, reused for every docker call (rke's DClient)."""

    def __init__(self, host, client) -> None:
        self.host = host
        self.client = client
        self.lock = threading.Lock()
        self.channel = None
        self.reader = None

    def batch(self, calls: list[tuple[list[str], bytes | None]]) -> list[Result]:
        payload = [
            {"args": args, **({"stdin": base64.b64encode(data).decode()} if data else {})}
            for args, data in calls
        ]
        return self.raw(payload)

    def raw(self, payload: list[dict]) -> list[Result]:
        with self.lock:
            try:
                if self.channel is None:
                    self.channel = self.client.get_transport().open_session(timeout=30)
                    self.channel.exec_command("docker lab-serve")
                    self.reader = self.channel.makefile("rb")
                self.channel.sendall((json.dumps(payload) + "\n").encode())
                line = self.reader.readline()
            except Exception as exc:  # noqa: BLE001 - the connection dropped
                raise RkeError(
                    'error during connect: Post "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/'
                    f'containers/create": Failed to dial ssh using address '
                    f"[{self.host.address}:{self.host.port}]: {exc}"
                ) from None
        if not line:
            err = ""
            if self.channel is not None and self.channel.recv_stderr_ready():
                err = self.channel.recv_stderr(65536).decode(errors="replace")
            raise RkeError(
                "Unable to access the service on /var/run/docker.sock. The service might be "
                f"still starting up. Error: ssh: rejected: connect failed (open failed) {err}"
            )
        return [
            Result(r["rc"], base64.b64decode(r["stdout"]), r["stderr"]) for r in json.loads(line)
        ]

    def one(self, *args: str, stdin: bytes | None = None) -> Result:
        return self.batch([(list(args), stdin)])[0]

    def node_root(self) -> str:
        """Lab only: where this node's filesystem lives on the lab machine ($LAB_NODE_ROOT)."""
        _, stdout, _ = self.client.exec_command("printenv LAB_NODE_ROOT", timeout=30)
        return stdout.read().decode().strip()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def dial(host, agent_auth: bool) -> Tunnel:
    """rke's newDialer + ssh.Dial, with its error texts."""
    import paramiko

    node = host.node
    address = f"{host.address}:{host.port}"
    key_text = node.get("ssh_key", "")
    use_agent = agent_auth and bool(os.environ.get("SSH_AUTH_SOCK"))
    if not key_text and not agent_auth:
        try:
            key_text = read_key_file(node.get("ssh_key_path", "") or "~/.ssh/id_rsa")
        except TunnelError as exc:
            raise TunnelError(f"Can't establish dialer connection: {exc}") from None
    pkey = None
    if not use_agent:
        try:
            pkey = _parse_key(key_text)
        except TunnelError as exc:
            text = f"Error configuring SSH: {exc}"
            if "no key found" in text:
                raise TunnelError(
                    f"Unable to access node with address [{address}] using SSH. Please check if "
                    "the configured key or specified key file is a valid SSH Private Key. "
                    f"Error: {text}"
                ) from None
            raise TunnelError(f"Failed to dial ssh using address [{address}]: {text}") from None
    port = int(host.port) if str(host.port).isdigit() else 22
    try:
        sock = socket.create_connection((host.address, port), timeout=30)
    except ConnectionRefusedError:
        raise TunnelError(
            f"Failed to dial ssh using address [{address}]: dial tcp {address}: connect: "
            "connection refused"
        ) from None
    except TimeoutError:
        raise TunnelError(
            f"Unable to access node with address [{address}] using SSH. Please check if the node "
            "is up and is accepting SSH connections or check network policies and firewall "
            f"rules. Error: dial tcp {address}: connect: operation timed out"
        ) from None
    except socket.gaierror:
        raise TunnelError(
            f"Failed to dial ssh using address [{address}]: dial tcp: lookup {host.address}: no "
            "such host"
        ) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise TunnelError(
            f"Failed to dial ssh using address [{address}]: dial tcp {address}: connect: {reason}"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_Ignore())
    try:
        client.connect(
            host.address,
            port=port,
            username=host.user,
            pkey=pkey,
            sock=sock,
            allow_agent=use_agent,
            look_for_keys=False,
            timeout=30,
            banner_timeout=30,
            auth_timeout=30,
        )
    except paramiko.AuthenticationException:
        client.close()
        raise TunnelError(
            f"Unable to access node with address [{address}] using SSH. Please check if you are "
            "able to SSH to the node using the specified SSH Private Key and if you have "
            "configured the correct SSH username. Error: ssh: handshake failed: ssh: unable to "
            "authenticate, attempted methods [none publickey], no supported methods remain"
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        client.close()
        raise TunnelError(
            f"Failed to dial ssh using address [{address}]: ssh: handshake failed: "
            f"{str(exc) or 'EOF'}"
        ) from None
    return Tunnel(host, client)


def tunnel_up(host, version: str, agent_auth: bool) -> None:
    """hosts.TunnelUp: dial, Docker Info, Docker version check."""
    if host.conn is not None:
        return
    log.info(f"[dialer] Setup tunnel for host [{host.address}]")
    try:
        tunnel = dial(host, agent_auth)
    except TunnelError as exc:
        text = str(exc)
        if text.startswith("Can't establish dialer connection"):
            raise TunnelError(text) from None
        raise TunnelError(
            f"Can't retrieve Docker Info: error during connect: {DOCKER_INFO_URL}: {text}"
        ) from None
    try:
        result = tunnel.one("info", "--format", "{{json .}}")
    except RkeError as exc:
        tunnel.close()
        raise TunnelError(f"Can't retrieve Docker Info: {exc}") from None
    if result.rc != 0:
        tunnel.close()
        raise TunnelError(
            f"Can't retrieve Docker Info: error during connect: {DOCKER_INFO_URL}: Unable to "
            "access the service on /var/run/docker.sock. The service might be still starting "
            "up. Error: ssh: rejected: connect failed (open failed)"
        )
    info = json.loads(result.text)
    host.docker_version = info.get("ServerVersion", "")
    log.debug(f"Docker Info found for host [{host.address}]: {info}")
    if not host.ignore_docker_version:
        check_docker_version(host, version, tunnel)
    host.conn = tunnel


def check_docker_version(host, version: str, tunnel: Tunnel) -> None:
    from lab.rke.config import parse_version

    parsed = parse_version(version)
    if parsed is None:
        tunnel.close()
        raise TunnelError(
            f"Error while parsing cluster version [{version}]: Invalid Semantic Version"
        )
    minor = f"{parsed[0]}.{parsed[1]}"
    allowed = metadata.DOCKER_VERSIONS.get(minor, ())
    server = host.docker_version
    parts = server.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        tunnel.close()
        raise TunnelError(
            f"Error while determining supported Docker version [{server}]: Invalid Semantic Version"
        ) from None
    for entry in allowed:
        bits = entry.split(".")
        if (int(bits[0]), int(bits[1])) == major_minor:
            return
    tunnel.close()
    raise TunnelError(
        f"Unsupported Docker version found [{server}] on host [{host.address}], supported "
        f"versions are [{' '.join(allowed)}]"
    )


def tunnel_hosts(cluster, agent_auth: bool) -> None:
    """cluster.TunnelHosts: unreachable hosts become inactive (warned), then ValidateHostCount."""
    cluster.inactive_hosts = []
    hosts = cluster.all_hosts
    errors: dict[str, TunnelError] = {}

    def work(host) -> None:
        try:
            tunnel_up(host, cluster.version, agent_auth)
        except TunnelError as exc:
            errors[host.address] = exc

    with ThreadPoolExecutor(max_workers=max(1, min(len(hosts), 50))) as pool:
        list(pool.map(work, hosts))
    for host in hosts:
        exc = errors.get(host.address)
        if exc is None:
            continue
        if "Unsupported Docker version found" in str(exc):
            raise RkeError(str(exc))
    for host in hosts:
        exc = errors.get(host.address)
        if exc is not None:
            log.warning(f"Failed to set up SSH tunneling for host [{host.address}]: {exc}")
            cluster.inactive_hosts.append(host)
    for host in cluster.inactive_hosts:
        log.warning(f"Removing host [{host.address}] from node lists")
    cluster.remove_inactive()
    validate_host_count(cluster)


def validate_host_count(cluster) -> None:
    external = cluster.config.get("services", {}).get("etcd", {}).get("external_urls")
    if not cluster.etcd_hosts and not external:
        for host in cluster.inactive_hosts:
            failed = [host.address] if host.is_etcd else []
            raise RkeError(
                "Cluster must have at least one etcd plane host: failed to connect to the "
                f"following etcd host(s) [{' '.join(failed)}]"
            )
        raise RkeError(
            "Cluster must have at least one etcd plane host: please specify one or more etcd in "
            "cluster config"
        )
    if cluster.etcd_hosts and external:
        raise RkeError("Cluster can't have both internal and external etcd")


def close_all(cluster) -> None:
    for host in cluster.all_hosts + cluster.inactive_hosts:
        if host.conn is not None:
            host.conn.close()
            host.conn = None


# --- docker/docker.go on a tunnel --------------------------------------------------------------
def tar_files(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def untar_one(data: bytes) -> bytes | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    handle = archive.extractfile(member)
                    return handle.read() if handle else None
    except tarfile.TarError:
        return None
    return None


def create_args(
    name: str,
    image: str,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
    binds: list[str] | None = None,
    privileged: bool = False,
    network: str = "",
    restart: str = "",
) -> list[str]:
    args = ["--name", name]
    for item in env or []:
        args += ["-e", item]
    for bind in binds or []:
        args += ["-v", bind]
    if privileged:
        args.append("--privileged")
    if network:
        args += ["--net", network]
    if restart:
        args += ["--restart", restart]
    return [*args, image, *(cmd or [])]


@dataclass
class Spec:
    """One container rke runs on a host (name, image and the create options)."""

    name: str
    image: str
    cmd: list[str] | None = None
    env: list[str] | None = None
    binds: list[str] | None = None
    privileged: bool = False
    network: str = ""
    restart: str = ""

    def args(self) -> list[str]:
        return create_args(
            self.name,
            self.image,
            self.cmd,
            self.env,
            self.binds,
            self.privileged,
            self.network,
            self.restart,
        )


class Plan:
    """Docker calls for one host, sent in one SSH round trip (a conditional `lab-batch`).

    Each helper mirrors an rke docker helper (DoRunContainer, DoRunOnetimeContainer,
    DoRemoveContainer, ...). Its log lines and errors are replayed in order after the round trip.
    """

    def __init__(self, host) -> None:
        self.host = host
        self.calls: list[dict] = []
        self.steps: list = []
        self.results: list[Result] = []

    def call(self, args: list[str], stdin: bytes | None = None, when=None) -> int:
        entry: dict = {"args": args}
        if stdin:
            entry["stdin"] = base64.b64encode(stdin).decode()
        if when:
            entry["when"] = when
        self.calls.append(entry)
        return len(self.calls) - 1

    def step(self, fn) -> None:
        self.steps.append(fn)

    def info(self, text: str) -> None:
        self.steps.append(lambda: log.info(text))

    def _fail(self, index: int, what: str) -> None:
        result = self.results[index]
        if result.rc not in (0, None):
            raise RkeError(f"{what}: Error response from daemon: {result.stderr.strip()}")

    def _image_log(self, image: str, index: int) -> None:
        a = self.host.address
        if self.results[index].rc == 0:
            log.info(f"Image [{image}] exists on host [{a}]")
        else:
            log.info(f"Pulling image [{image}] on host [{a}], try #1")

    def run(self, plane: str, specs: list[Spec], health: tuple[str, ...] = ()) -> None:
        """DoRunContainer for each spec: start what is missing or stopped."""
        for spec in specs:
            base = self.call(["inspect", "--format", "{{json .}}", spec.name])
            self.call(["image", "inspect", spec.image])
            self.call(["pull", spec.image], when=[[base + 1, "nonzero"]])
            self.call(["run", "-d", *spec.args()], when=[[base, "nonzero"]])
            self.call(["start", spec.name], when=[[base, "zero"]])
            self.step(
                lambda spec=spec, base=base: self._after_run(plane, spec, base, spec.name in health)
            )

    def _after_run(self, plane: str, spec: Spec, base: int, health: bool) -> None:
        a = self.host.address
        inspect, start = self.results[base], self.results[base + 4]
        if inspect.rc == 0:
            data = json.loads(inspect.text)
            if data["State"]["Running"] and data.get("Image") == spec.image:
                log.debug(f"[{plane}] Container [{spec.name}] is already running on host [{a}]")
            elif data.get("Image") != spec.image:
                self._image_log(spec.image, base + 1)
                again = self.host.conn.batch(
                    [(["pull", spec.image], None), (["rm", "-f", spec.name], None)]
                    + [(["run", "-d", *spec.args()], None)]
                )
                if again[-1].rc != 0:
                    raise RkeError(
                        f"Failed to start [{spec.name}] container on host [{a}]: Error response "
                        f"from daemon: {again[-1].stderr.strip()}"
                    )
                log.info(f"[{plane}] Successfully updated [{spec.name}] container on host [{a}]")
            else:
                log.info(f"[{plane}] Starting stopped container [{spec.name}] on host [{a}]")
                self._fail(base + 4, f"Failed to start [{spec.name}] container on host [{a}]")
                log.info(f"[{plane}] Successfully started [{spec.name}] container on host [{a}]")
            del start
        else:
            self._image_log(spec.image, base + 1)
            log.info(f"Starting container [{spec.name}] on host [{a}], try #1")
            self._fail(base + 3, f"Failed to create [{spec.name}] container on host [{a}]")
            log.info(f"[{plane}] Successfully started [{spec.name}] container on host [{a}]")
        if health:
            log.info(f"[healthcheck] Start Healthcheck on service [{spec.name}] on host [{a}]")
            log.info(f"[healthcheck] service [{spec.name}] on host [{a}] is healthy")

    def once(self, spec: Spec, files: dict | None = None, quiet_remove: bool = False) -> int:
        """DoRunOnetimeContainer: create, copy files in, start, wait, remove. Returns the run."""
        self.call(["rm", "-f", spec.name])
        image = self.call(["image", "inspect", spec.image])
        self.call(["pull", spec.image], when=[[image, "nonzero"]])
        create = self.call(["create", *spec.args()])
        for dest, content in (files or {}).items():
            self.call(["cp", "-", f"{spec.name}:{dest}"], tar_files(content), [[create, "zero"]])
        start = self.call(["start", "-a", spec.name], when=[[create, "zero"]])
        self.call(["rm", "-f", spec.name], when=[[create, "zero"]])

        def after() -> None:
            a = self.host.address
            self._image_log(spec.image, image)
            log.info(f"Starting container [{spec.name}] on host [{a}], try #1")
            self._fail(create, f"Failed to create [{spec.name}] container on host [{a}]")
            log.info(f"Successfully started [{spec.name}] container on host [{a}]")
            log.info(f"Waiting for [{spec.name}] container to exit on host [{a}]")
            if not quiet_remove:
                log.info(f"Removing container [{spec.name}] on host [{a}], try #1")
                log.info(f"[remove/{spec.name}] Successfully removed container on host [{a}]")

        self.step(after)
        return start

    def remove(self, names: list[str]) -> None:
        """DoRemoveContainer: logs only for containers that existed."""
        for name in names:
            index = self.call(["rm", "-f", name])

            def after(name=name, index=index) -> None:
                a = self.host.address
                if self.results[index].rc == 0:
                    log.info(f"Removing container [{name}] on host [{a}], try #1")
                    log.info(f"[remove/{name}] Successfully removed container on host [{a}]")

            self.step(after)

    def restart(self, names: list[str]) -> None:
        for name in names:
            index = self.call(["restart", name])

            def after(name=name, index=index) -> None:
                a = self.host.address
                if self.results[index].rc == 0:
                    log.info(f"Restarting container [{name}] on host [{a}], try #1")
                    log.info(f"[restart/{name}] Successfully restarted container on host [{a}]")

            self.step(after)

    def copy_from(self, name: str, path: str) -> int:
        return self.call(["cp", f"{name}:{path}", "-"])

    def copy_to(self, name: str, dest: str, files: dict[str, tuple[bytes, int]]) -> int:
        return self.call(["cp", "-", f"{name}:{dest}"], tar_files(files))

    def file(self, index: int) -> bytes | None:
        result = self.results[index]
        if result.rc != 0:
            return None
        return untar_one(result.stdout)

    def execute(self) -> Plan:
        self.results = self.host.conn.raw(self.calls) if self.calls else []
        for step in self.steps:
            step()
        return self


class Docker:
    """One-operation plans (one round trip each)."""

    def __init__(self, host) -> None:
        self.host = host

    def run(self, plane: str, specs: list[Spec], health: tuple[str, ...] = ()) -> None:
        plan = Plan(self.host)
        plan.run(plane, specs, health)
        plan.execute()

    def run_once(self, plane: str, spec: Spec, files=None, quiet_remove: bool = False) -> Result:
        plan = Plan(self.host)
        index = plan.once(spec, files, quiet_remove)
        plan.execute()
        return plan.results[index]

    def remove(self, names: list[str]) -> None:
        plan = Plan(self.host)
        plan.remove(names)
        plan.execute()

    def restart(self, names: list[str]) -> None:
        plan = Plan(self.host)
        plan.restart(names)
        plan.execute()

    def running(self, name: str) -> bool:
        log.info(f"Finding container [{name}] on host [{self.host.address}], try #1")
        result = self.host.conn.one("inspect", "--format", "{{json .}}", name)
        return result.rc == 0 and json.loads(result.text)["State"]["Running"]

    def copy_from(self, name: str, path: str) -> bytes | None:
        plan = Plan(self.host)
        index = plan.copy_from(name, path)
        return plan.execute().file(index)

    def copy_to(self, name: str, dest: str, files: dict[str, tuple[bytes, int]]) -> bool:
        plan = Plan(self.host)
        index = plan.copy_to(name, dest, files)
        return plan.execute().results[index].rc == 0
