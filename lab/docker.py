"""Stand-in `docker` CLI on a lab node: answers like the real client talking to a daemon.

The node's state lives under `$LAB_NODE_ROOT`: `docker-version` holds the daemon's version,
and a `docker-stopped` file makes the daemon unreachable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CLIENT_VERSION = "26.1.4"
API_VERSION = "1.45"
DAEMON_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?"
)


def _root() -> Path:
    return Path(os.environ.get("LAB_NODE_ROOT", "."))


def _server_version() -> str | None:
    root = _root()
    if (root / "docker-stopped").exists():
        return None
    return (root / "docker-version").read_text().strip()


def _version(args: list[str]) -> int:
    fmt = None
    if "--format" in args:
        fmt = args[args.index("--format") + 1]
    elif any(a.startswith("--format=") for a in args):
        fmt = next(a for a in args if a.startswith("--format="))[len("--format=") :]
    server = _server_version()
    if fmt is not None:
        fields = {"{{.Server.Version}}": server, "{{.Client.Version}}": CLIENT_VERSION}
        if fmt.strip() not in fields:
            print(f"template: unsupported in the lab: {fmt}", file=sys.stderr)
            return 1
        value = fields[fmt.strip()]
        if value is None:
            print(DAEMON_DOWN, file=sys.stderr)
            return 1
        print(value)
        return 0
    print(f"Client:\n Version:           {CLIENT_VERSION}\n API version:       {API_VERSION}")
    if server is None:
        print(DAEMON_DOWN, file=sys.stderr)
        return 1
    print(f"\nServer: Docker Engine - Community\n Engine:\n  Version:          {server}")
    return 0


def _ps(args: list[str]) -> int:
    if _server_version() is None:
        print(DAEMON_DOWN, file=sys.stderr)
        return 1
    print("CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES")
    return 0


COMMANDS = {"version": _version, "ps": _ps}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        name = args[0] if args else ""
        print(f"docker: '{name}' is not a docker command.", file=sys.stderr)
        return 1
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
