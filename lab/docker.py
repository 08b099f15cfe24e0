"""Stand-in `docker` CLI on a lab node: answers like the real client talking to a daemon.

The node's state lives under `$LAB_NODE_ROOT` (the node's "filesystem"): `docker-version` holds
the daemon's version and a `docker-stopped` file makes the daemon unreachable.

Containers and images are recorded under `$LAB_NODE_ROOT/var/lib/docker/lab/`: one JSON file per
container (config, binds, state), a private `rootfs/` per container, and `images.json`. Bind
mounts (`-v /etc/kubernetes:/etc/kubernetes`) map to the node root, so `docker cp` into a bound
path writes the node's files, as with a real daemon. Starting a container emulates the images
rke runs on nodes:

- `cert-deployer` (rancher/rke-tools): writes each `KUBE_*` env value to
  `/etc/kubernetes/ssl/<name>.pem` (mode 0600) unless the file exists and `FORCE_DEPLOY` is not
  `true`; each `KUBECFG_*` to `kubecfg-<name>.yaml` only when missing.
- `sh -c "find <dirs> -mindepth 1 -delete"` (rke's kube-cleaner): empties those directories.
- `rke-etcd-backup etcd-backup save --name N` (one-shot): zips the node's etcd data
  (`/var/lib/etcd`) and `/etc/kubernetes/N.rkestate` into `/opt/rke/etcd-snapshots/N.zip`.
- `rke-etcd-backup etcd-backup extractstatefile --name N`: prints the state file in snapshot N.
- `etcd-restore N`: replaces `/var/lib/etcd` with the data of snapshot N.
- anything else is a service: it keeps running (`docker ps` shows it) until stopped or removed.

Subcommands: version, info, ps, inspect, image inspect, images, pull, create, run, start, stop,
restart, rm, cp (`-` tar on stdin/stdout), logs; `lab-serve` answers `lab-batch` request lists
line by line over one long-lived session; and `lab-batch` (several invocations in one
process: a JSON list of `{"args": [...], "stdin": "<base64>", "when": [[i, "zero"|"nonzero"]]}`
on stdin, run in order, an entry skipped (rc null) unless entry i's exit code matched; a JSON list
of `{"rc", "stdout" (base64), "stderr"}` on stdout) so rke's many small calls stay cheap.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shlex
import shutil
import sys
import tarfile
import time
import zipfile
from pathlib import Path

CLIENT_VERSION = "26.1.4"
API_VERSION = "1.45"
DAEMON_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?"
)


class Io:
    def __init__(self, stdin: bytes = b"") -> None:
        self.stdin = stdin
        self.out = io.BytesIO()
        self.err = io.StringIO()

    def print(self, text: str = "") -> None:
        self.out.write((text + "\n").encode())

    def error(self, text: str) -> None:
        self.err.write(text + "\n")


def _root() -> Path:
    return Path(os.environ.get("LAB_NODE_ROOT", "."))


def _state() -> Path:
    path = _root() / "var/lib/docker/lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _server_version() -> str | None:
    root = _root()
    if (root / "docker-stopped").exists():
        return None
    return (root / "docker-version").read_text().strip()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _format_option(args: list[str]) -> tuple[str | None, list[str]]:
    rest, fmt = [], None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--format", "-f") and i + 1 < len(args):
            fmt = args[i + 1]
            i += 2
            continue
        if a.startswith("--format="):
            fmt = a[len("--format=") :]
        else:
            rest.append(a)
        i += 1
    return fmt, rest


# --- containers -------------------------------------------------------------------------------
def _container_file(name: str) -> Path:
    return _state() / "containers" / f"{name.lstrip('/')}.json"


def _load(name: str) -> dict | None:
    path = _container_file(name)
    if not path.exists():
        for other in (_state() / "containers").glob("*.json"):
            data = json.loads(other.read_text())
            if data["Id"].startswith(name) and len(name) >= 4:
                return data
        return None
    return json.loads(path.read_text())


def _save(data: dict) -> None:
    path = _container_file(data["Name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _all() -> list[dict]:
    folder = _state() / "containers"
    if not folder.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _rootfs(name: str) -> Path:
    return _state() / "containers" / f"{name}.rootfs"


def _host_path(data: dict, container_path: str) -> Path:
    """Where a path inside the container lives: a bind's source on the node, else the rootfs."""
    path = "/" + container_path.strip("/")
    best = None
    for bind in data.get("Binds", []):
        parts = bind.split(":")
        src, dst = parts[0], parts[1] if len(parts) > 1 else parts[0]
        dst = "/" + dst.strip("/")
        if (path == dst or path.startswith(dst.rstrip("/") + "/") or dst == "/") and (
            best is None or len(dst) > len(best[1])
        ):
            best = (src, dst)
    if best is None:
        return _rootfs(data["Name"]) / path.lstrip("/")
    src, dst = best
    rel = path[len(dst) :].lstrip("/") if dst != "/" else path.lstrip("/")
    return _root() / src.lstrip("/") / rel


def _parse_create(args: list[str]) -> tuple[dict, bool, bool, bool]:
    opts = {"Name": "", "Env": [], "Binds": [], "Privileged": False, "NetworkMode": "default"}
    opts["RestartPolicy"] = "no"
    detach = remove = attach = False
    i = 0
    value_opts = {
        "--name",
        "-e",
        "--env",
        "-v",
        "--volume",
        "--net",
        "--network",
        "--restart",
        "--pid",
        "-p",
        "--publish",
        "--volumes-from",
        "--security-opt",
        "--user",
        "-u",
        "--entrypoint",
        "--label",
        "-l",
    }
    while i < len(args):
        a = args[i]
        if not a.startswith("-"):
            break
        name, _, inline = a.partition("=")
        if name in value_opts:
            if inline or "=" in a:
                value = inline
            else:
                i += 1
                value = args[i]
            if name == "--name":
                opts["Name"] = value
            elif name in ("-e", "--env"):
                opts["Env"].append(value)
            elif name in ("-v", "--volume"):
                opts["Binds"].append(value)
            elif name in ("--net", "--network"):
                opts["NetworkMode"] = value
            elif name == "--restart":
                opts["RestartPolicy"] = value
            elif name == "--entrypoint":
                opts["Entrypoint"] = value
            elif name in ("-p", "--publish"):
                opts.setdefault("Ports", []).append(value)
        elif a == "--privileged":
            opts["Privileged"] = True
        elif a in ("-d", "--detach"):
            detach = True
        elif a == "--rm":
            remove = True
        elif a in ("-a", "--attach", "-i", "--interactive", "-t", "-it"):
            attach = True
        i += 1
    rest = args[i:]
    if not rest:
        raise ValueError('"docker create" requires at least 1 argument.')
    opts["Image"] = rest[0]
    opts["Cmd"] = rest[1:]
    return opts, detach, remove, attach


def _create(args: list[str], io_: Io) -> dict | None:
    try:
        opts, _, _, _ = _parse_create(args)
    except ValueError as exc:
        io_.error(str(exc))
        return None
    name = opts["Name"] or f"lab_{secrets.token_hex(4)}"
    if _load(name) is not None:
        existing = _load(name)
        io_.error(
            f'Error response from daemon: Conflict. The container name "/{name}" is already in '
            f'use by container "{existing["Id"]}". You have to remove (or rename) that container '
            "to be able to reuse that name."
        )
        return None
    if opts["Image"] not in _images():
        _pull_image(opts["Image"])
    data = {
        "Id": secrets.token_hex(32),
        "Name": name,
        "Created": _now(),
        "State": {"Status": "created", "Running": False, "ExitCode": 0},
        "Output": "",
        **{k: v for k, v in opts.items() if k != "Name"},
    }
    _save(data)
    return data


def _env(data: dict) -> dict[str, str]:
    out = {}
    for item in data.get("Env", []):
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _emulate(data: dict) -> tuple[bool, int, str]:
    """Run the container's command: (still running, exit code, output)."""
    cmd = list(data.get("Cmd") or [])
    if cmd == ["cert-deployer"]:
        return False, 0, _cert_deployer(data)
    if len(cmd) == 3 and cmd[:2] == ["sh", "-c"] and cmd[2].startswith("find "):
        words = shlex.split(cmd[2])
        for target in [w for w in words[1:] if w.startswith("/")]:
            folder = _host_path(data, target)
            if folder.is_dir():
                for child in list(folder.iterdir()):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        return False, 0, ""
    if cmd[:3] == ["/opt/rke-tools/rke-etcd-backup", "etcd-backup", "save"] and "--once" in cmd:
        return _snapshot_save(data, cmd[cmd.index("--name") + 1])
    if cmd[:3] == ["/opt/rke-tools/rke-etcd-backup", "etcd-backup", "extractstatefile"]:
        return _extract_state(data, cmd[cmd.index("--name") + 1])
    if cmd[:1] == ["etcd-restore"]:
        return _restore(data, cmd[1])
    if cmd[:1] == ["true"] or (not cmd and "rke-tools" in data.get("Image", "")):
        return False, 0, ""
    if "coreos-etcd" in data.get("Image", ""):
        _host_path(data, "/var/lib/rancher/etcd/member").mkdir(parents=True, exist_ok=True)
    return True, 0, ""


def _cert_deployer(data: dict) -> str:
    env = _env(data)
    ssl = _host_path(data, "/etc/kubernetes/ssl")
    ssl.mkdir(parents=True, exist_ok=True)
    ssl.chmod(0o700)
    force = env.get("FORCE_DEPLOY") == "true"
    for key, value in env.items():
        if key.startswith("KUBE_"):
            target = ssl / (key.lower().replace("_", "-") + ".pem")
            if not target.exists() or force:
                target.write_text(value + "\n")
                target.chmod(0o600)
        elif key.startswith("KUBECFG_"):
            target = ssl / (key.lower().replace("_", "-") + ".yaml")
            if not target.exists():
                target.write_text(value + "\n")
                target.chmod(0o600)
    return ""


def _snapshot_dir(data: dict) -> Path:
    return _host_path(data, "/backup") if data.get("Binds") else _root() / "opt/rke/etcd-snapshots"


def _snapshot_save(data: dict, name: str) -> tuple[bool, int, str]:
    etcd = _root() / "var/lib/etcd"
    if not etcd.exists():
        return False, 1, "Error: context deadline exceeded"
    folder = _snapshot_dir(data)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(etcd.rglob("*")):
            if path.is_file():
                archive.write(path, f"backup/{name}/{path.relative_to(etcd)}")
        state = _root() / "etc/kubernetes" / f"{name}.rkestate"
        if state.exists():
            archive.write(state, f"backup/{name}.rkestate")
    return False, 0, ""


def _open_snapshot(data: dict, name: str) -> zipfile.ZipFile | None:
    target = _snapshot_dir(data) / f"{name}.zip"
    if not target.exists():
        return None
    return zipfile.ZipFile(target)


def _extract_state(data: dict, name: str) -> tuple[bool, int, str]:
    archive = _open_snapshot(data, name)
    if archive is None:
        return False, 1, f"Unable to find snapshot [{name}]"
    with archive:
        member = f"backup/{name}.rkestate"
        if member not in archive.namelist():
            return False, 1, f"state file not found in snapshot [{name}]"
        return False, 0, archive.read(member).decode()


def _restore(data: dict, name: str) -> tuple[bool, int, str]:
    archive = _open_snapshot(data, name)
    if archive is None:
        return False, 1, f"Error: stat /opt/rke/etcd-snapshots/{name}: no such file or directory"
    etcd = _root() / "var/lib/etcd"
    if etcd.exists():
        shutil.rmtree(etcd)
    etcd.mkdir(parents=True)
    prefix = f"backup/{name}/"
    with archive:
        for member in archive.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                target = etcd / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
    return False, 0, ""


def _start(data: dict) -> dict:
    running, code, output = _emulate(data)
    data["State"] = {
        "Status": "running" if running else "exited",
        "Running": running,
        "ExitCode": code,
        "StartedAt": _now(),
    }
    data["Output"] = output
    _save(data)
    return data


def _remove(name: str) -> None:
    _container_file(name).unlink(missing_ok=True)
    shutil.rmtree(_rootfs(name), ignore_errors=True)


# --- images -----------------------------------------------------------------------------------
def _images() -> list[str]:
    path = _state() / "images.json"
    return json.loads(path.read_text()) if path.exists() else []


def _pull_image(image: str) -> None:
    images = _images()
    if image not in images:
        images.append(image)
        (_state() / "images.json").write_text(json.dumps(images))


# --- commands ---------------------------------------------------------------------------------
def _version(args: list[str], io_: Io) -> int:
    fmt, _ = _format_option(args)
    server = _server_version()
    if fmt is not None:
        fields = {"{{.Server.Version}}": server, "{{.Client.Version}}": CLIENT_VERSION}
        if fmt.strip() not in fields:
            io_.error(f"template: unsupported in the lab: {fmt}")
            return 1
        value = fields[fmt.strip()]
        if value is None:
            io_.error(DAEMON_DOWN)
            return 1
        io_.print(value)
        return 0
    io_.print(f"Client:\n Version:           {CLIENT_VERSION}\n API version:       {API_VERSION}")
    if server is None:
        io_.error(DAEMON_DOWN)
        return 1
    io_.print(f"\nServer: Docker Engine - Community\n Engine:\n  Version:          {server}")
    return 0


def _info(args: list[str], io_: Io) -> int:
    fmt, _ = _format_option(args)
    server = _server_version()
    if server is None:
        io_.error(DAEMON_DOWN)
        return 1
    info = {
        "ServerVersion": server,
        "OSType": "linux",
        "OperatingSystem": "Lab Linux",
        "DockerRootDir": "/var/lib/docker",
        "Containers": len(_all()),
        "SecurityOptions": ["name=seccomp,profile=builtin"],
    }
    if fmt is not None:
        if fmt.strip() == "{{json .}}":
            io_.print(json.dumps(info))
            return 0
        key = fmt.strip().removeprefix("{{.").removesuffix("}}")
        if key not in info:
            io_.error(f"template: unsupported in the lab: {fmt}")
            return 1
        io_.print(str(info[key]))
        return 0
    io_.print(f"Server:\n Containers: {info['Containers']}\n Server Version: {server}")
    return 0


def _daemon(io_: Io) -> bool:
    if _server_version() is None:
        io_.error(DAEMON_DOWN)
        return False
    return True


def _ps(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    fmt, rest = _format_option(args)
    show_all = "-a" in rest or "--all" in rest
    quiet = "-q" in rest
    names = None
    for i, a in enumerate(rest):
        if a == "--filter" and i + 1 < len(rest) and rest[i + 1].startswith("name="):
            names = rest[i + 1][5:].strip("^$")
    rows = [
        c
        for c in _all()
        if (show_all or c["State"]["Running"]) and (names is None or c["Name"] == names)
    ]
    if quiet:
        for c in rows:
            io_.print(c["Id"][:12])
        return 0
    if fmt is not None:
        for c in rows:
            line = fmt.replace("{{.Names}}", c["Name"]).replace("{{.Image}}", c["Image"])
            line = line.replace("{{.ID}}", c["Id"][:12]).replace("{{.State}}", c["State"]["Status"])
            io_.print(line)
        return 0
    io_.print("CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES")
    for c in rows:
        status = "Up" if c["State"]["Running"] else f"Exited ({c['State']['ExitCode']})"
        io_.print(
            f"{c['Id'][:12]}   {c['Image']}   {' '.join(c['Cmd'])!r}   {status}   {c['Name']}"
        )
    return 0


def _inspect(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    fmt, rest = _format_option(args)
    rest = [a for a in rest if not a.startswith("--type")]
    rc = 0
    found = []
    for name in rest:
        data = _load(name)
        if data is None:
            io_.error(f"Error: No such object: {name}")
            rc = 1
            continue
        found.append(data)
    if fmt is not None:
        for data in found:
            text = fmt.strip()
            for key, value in (
                ("{{.State.Running}}", str(data["State"]["Running"]).lower()),
                ("{{.State.Status}}", data["State"]["Status"]),
                ("{{.State.ExitCode}}", str(data["State"]["ExitCode"])),
                ("{{.Config.Image}}", data["Image"]),
                ("{{.Id}}", data["Id"]),
                ("{{json .}}", json.dumps(data)),
            ):
                text = text.replace(key, value)
            io_.print(text)
    else:
        io_.print(json.dumps(found, indent=4))
    return rc


def _image(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    if not args or args[0] != "inspect":
        io_.error("docker image: only `inspect` in the lab")
        return 1
    _, rest = _format_option(args[1:])
    rc = 0
    for image in rest:
        if image in _images():
            io_.print(json.dumps([{"RepoTags": [image]}]))
        else:
            io_.error(f"Error response from daemon: No such image: {image}")
            rc = 1
    return rc


def _images_cmd(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    io_.print("REPOSITORY   TAG")
    for image in _images():
        repo, _, tag = image.rpartition(":")
        io_.print(f"{repo}   {tag}")
    return 0


def _pull(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    image = next(a for a in args if not a.startswith("-"))
    _pull_image(image)
    repo, _, tag = image.rpartition(":")
    io_.print(f"{tag}: Pulling from {repo}")
    io_.print(f"Status: Downloaded newer image for {image}")
    return 0


def _create_cmd(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    data = _create(args, io_)
    if data is None:
        return 1
    io_.print(data["Id"])
    return 0


def _run(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    try:
        _, detach, remove, _ = _parse_create(args)
    except ValueError as exc:
        io_.error(str(exc).replace("create", "run"))
        return 1
    data = _create(args, io_)
    if data is None:
        return 125
    data = _start(data)
    if detach:
        io_.print(data["Id"])
        return 0
    io_.out.write(data["Output"].encode())
    code = data["State"]["ExitCode"]
    if remove and not data["State"]["Running"]:
        _remove(data["Name"])
    return code


def _start_cmd(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    attach = any(a in ("-a", "--attach") for a in args)
    rc = 0
    for name in [a for a in args if not a.startswith("-")]:
        data = _load(name)
        if data is None:
            io_.error(f"Error response from daemon: No such container: {name}")
            io_.error("Error: failed to start containers: " + name)
            rc = 1
            continue
        if not data["State"]["Running"]:
            data = _start(data)
        if attach:
            io_.out.write(data["Output"].encode())
            rc = data["State"]["ExitCode"]
        else:
            io_.print(name)
    return rc


def _each_container(args: list[str], io_: Io, action) -> int:
    """Apply `action` to each named container, as `docker stop/restart a b c` do."""
    if not _daemon(io_):
        return 1
    rc = 0
    for name in [a for a in args if not a.startswith("-")]:
        data = _load(name)
        if data is None:
            io_.error(f"Error response from daemon: No such container: {name}")
            rc = 1
            continue
        action(data)
        io_.print(name)
    return rc


def _stopped(data: dict) -> None:
    data["State"] = {"Status": "exited", "Running": False, "ExitCode": 0}
    _save(data)


def _stop(args: list[str], io_: Io) -> int:
    return _each_container(args, io_, _stopped)


def _restart(args: list[str], io_: Io) -> int:
    return _each_container(args, io_, _start)


def _rm(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    force = any(a in ("-f", "--force") for a in args)
    rc = 0
    for name in [a for a in args if not a.startswith("-")]:
        data = _load(name)
        if data is None:
            io_.error(f"Error response from daemon: No such container: {name}")
            rc = 1
            continue
        if data["State"]["Running"] and not force:
            io_.error(
                f'Error response from daemon: cannot remove container "/{name}": container is '
                "running: stop the container before removing or force remove"
            )
            rc = 1
            continue
        _remove(data["Name"])
        io_.print(name)
    return rc


def _logs(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    name = next(a for a in args if not a.startswith("-"))
    data = _load(name)
    if data is None:
        io_.error(f"Error response from daemon: No such container: {name}")
        return 1
    io_.out.write(data.get("Output", "").encode())
    return 0


def _cp(args: list[str], io_: Io) -> int:
    if not _daemon(io_):
        return 1
    args = [a for a in args if not a.startswith("-") or a == "-"]
    if len(args) != 2:
        io_.error('"docker cp" requires exactly 2 arguments.')
        return 1
    src, dst = args
    if src == "-":
        name, _, path = dst.partition(":")
        data = _load(name)
        if data is None:
            io_.error(f"Error response from daemon: No such container: {name}")
            return 1
        target = _host_path(data, path)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(io_.stdin)) as archive:
            archive.extractall(target, filter="tar")
        return 0
    name, _, path = src.partition(":")
    data = _load(name)
    if data is None:
        io_.error(f"Error response from daemon: No such container: {name}")
        return 1
    source = _host_path(data, path)
    if not source.exists():
        io_.error(f"Error response from daemon: Could not find the file {path} in container {name}")
        return 1
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(source, arcname=os.path.basename(path.rstrip("/")) or ".")
    io_.out.write(buffer.getvalue())
    return 0


COMMANDS = {
    "version": _version,
    "info": _info,
    "ps": _ps,
    "inspect": _inspect,
    "image": _image,
    "images": _images_cmd,
    "pull": _pull,
    "create": _create_cmd,
    "run": _run,
    "start": _start_cmd,
    "stop": _stop,
    "restart": _restart,
    "rm": _rm,
    "logs": _logs,
    "cp": _cp,
}


def run(args: list[str], io_: Io) -> int:
    if not args or args[0] not in COMMANDS:
        name = args[0] if args else ""
        io_.error(f"docker: '{name}' is not a docker command.")
        return 1
    return COMMANDS[args[0]](args[1:], io_)


def _process(requests: list[dict]) -> list[dict]:
    results: list[dict] = []
    for request in requests:
        skip = False
        for index, want in request.get("when", []):
            rc = results[index]["rc"]
            if rc is None or (want == "zero") != (rc == 0):
                skip = True
        if skip:
            results.append({"rc": None, "stdout": "", "stderr": ""})
            continue
        io_ = Io(base64.b64decode(request.get("stdin", "")))
        try:
            rc = run(list(request["args"]), io_)
        except Exception as exc:  # noqa: BLE001 - reported like a daemon error
            io_.error(f"Error response from daemon: {exc}")
            rc = 1
        results.append(
            {
                "rc": rc,
                "stdout": base64.b64encode(io_.out.getvalue()).decode(),
                "stderr": io_.err.getvalue(),
            }
        )
    return results


def _batch() -> int:
    sys.stdout.write(json.dumps(_process(json.loads(sys.stdin.buffer.read() or b"[]"))))
    return 0


def _serve() -> int:
    """One request list per stdin line, one result list per stdout line, until stdin closes
    (a client's long-lived connection to the daemon, as rke's Docker client keeps one)."""
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(json.dumps(_process(json.loads(line))) + "\n")
            sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["lab-batch"]:
        return _batch()
    if args[:1] == ["lab-serve"]:
        return _serve()
    stdin = b""
    if args[:2] == ["cp", "-"]:
        stdin = sys.stdin.buffer.read()
    io_ = Io(stdin)
    rc = run(args, io_)
    sys.stdout.buffer.write(io_.out.getvalue())
    sys.stdout.flush()
    sys.stderr.write(io_.err.getvalue())
    return rc


if __name__ == "__main__":
    sys.exit(main())
