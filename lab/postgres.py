"""A throw-away PostgreSQL server for a Prefect server on PostgreSQL (tests, benchmarks).

Debian's PostgreSQL binaries (`/usr/lib/postgresql/<version>/bin`), run by an unprivileged user
(`postgres`, which Debian's package creates; `nobody` otherwise; the current user when not
root): `initdb` into a fresh 0700 directory that user owns, password authentication
(scram-sha-256) over TCP for the one role, listening on 127.0.0.1 on a free port, its unix
socket in that directory. Durability is traded for speed (`fsync=off`): it is thrown away.
`stop()` stops it (`pg_ctl stop -m fast`) and removes the directory.

Prefect's migrations take half a minute on PostgreSQL: `migrated_template()` runs them once per
PostgreSQL and Prefect version and keeps the stopped data directory (0700) in a cache; a server
started from that `template` is a copy of it, ready in a few seconds.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Self

from lab.embedded import PREFECT, QUIET, free_port, private_dir

ROLE = "prefect"


def pg_bin(tool: str) -> str:
    """The path of a PostgreSQL server tool (the newest Debian version installed)."""
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    found = versions[-1] if versions else shutil.which(tool)
    if not found:
        raise FileNotFoundError(
            f"{tool} not found: install PostgreSQL (apt-get install postgresql)"
        )
    return found


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


@dataclass
class LabPostgres:
    """One PostgreSQL server on 127.0.0.1; a context manager. `url` is SQLAlchemy's asyncpg URL."""

    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    template: Path | None = None  # a data directory made by `migrated_template`
    root: Path | None = None
    database: str = "prefect"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _run(self, *command: str) -> None:
        user = _run_as()
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        result = subprocess.run(
            command,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            capture_output=True,
            text=True,
            check=False,
            **ids,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {result.stderr.strip()[-2000:]}")

    def _own(self, path: Path) -> None:
        """Give `path` (and what is under it) to the user the server runs as."""
        user = _run_as()
        if user is None:
            return
        os.chown(path, user.pw_uid, user.pw_gid)
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(
                    os.path.join(parent, name), user.pw_uid, user.pw_gid, follow_symlinks=False
                )

    def start(self) -> Self:
        self.root = Path(tempfile.mkdtemp(prefix="lab-postgres-"))
        try:
            if self.template is not None:
                shutil.copytree(self.template / "data", self.data, symlinks=True)
                self.password = (self.template / "password").read_text().strip()
                self._own(self.root)
            else:
                self._initdb()
            self._pg_ctl_start()
            if self.template is None:
                self._run(
                    pg_bin("createdb"),
                    *("-h", str(self.root), "-p", str(self.port), "-U", ROLE, self.database),
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        assert self.root is not None
        secret = self.root / "pwfile"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        self._own(self.root)
        try:
            self._run(
                pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                ROLE,
                f"--pwfile={secret}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",  # the socket is in a 0700 directory of that user
                "-E",
                "UTF8",
                "--no-sync",
            )
        finally:
            secret.unlink()

    def _pg_ctl_start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        log = str(self.root / "postgres.log")
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def migrated_template(cache_dir: Path) -> Path:
    """A stopped PostgreSQL data directory with Prefect's schema migrated, made once per
    PostgreSQL and Prefect version under `cache_dir` (0700), for `LabPostgres(template=...)`."""
    major = Path(pg_bin("postgres")).parent.parent.name
    template = cache_dir / f"postgres-{major}-prefect-{version('prefect')}"
    if (template / "data").is_dir():
        return template
    private_dir(cache_dir)
    with LabPostgres() as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            **QUIET,
            "PREFECT_HOME": str(server.root / "prefect"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": server.url,
        }
        subprocess.run(
            [PREFECT, "server", "database", "upgrade", "-y"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server._run(pg_bin("pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop")
        partial = Path(tempfile.mkdtemp(prefix=f"{template.name}.", dir=cache_dir))
        shutil.copytree(server.data, partial / "data", symlinks=True)
        (partial / "password").write_text(server.password + "\n")
        (partial / "password").chmod(0o600)
        partial.rename(template)
    return template
