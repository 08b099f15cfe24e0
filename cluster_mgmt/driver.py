"""Cluster drivers: what creates and removes clusters. RKE1 today; RKE2 or hosted ones later."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cluster_mgmt.errors import ClusterMgmtError
from cluster_mgmt.redact import redact

LineSink = Callable[[str, str], None]
"""Receives each output line as (level, message); level is logrus' (info, warning, ...)."""

_LOGRUS = re.compile(r'level=(\w+) msg="((?:[^"\\]|\\.)*)"')
_LOGRUS_BARE = re.compile(r"level=(\w+) msg=(\S+)")
_ADDON_FAILURE = "Failed to deploy addon execute job"
KILL_GRACE_SECONDS = 10.0
LAST_LINES = 3
_WRAPPER = Path(__file__).with_name("die_with_parent.py")


class DriverError(ClusterMgmtError):
    """The driver cannot run at all (binary missing, not executable); nothing was started."""


@dataclass
class RunResult:
    """What one driver command did; secret-free."""

    command: list[str]
    exit_code: int | None
    duration_seconds: float
    timed_out: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    output_error: str | None = None
    """Why handling rke's output failed (the line sink raised); rke still ran to its end."""
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.output_error is None

    @property
    def name(self) -> str:
        """`rke up`, `rke etcd snapshot-save`, ...: the command without its flags."""
        words = ["rke"]
        for arg in self.command[1:]:
            if arg.startswith("-"):
                break
            words.append(arg)
        return " ".join(words)

    @property
    def last_message(self) -> str | None:
        return self.last_lines[-1] if self.last_lines else None


class ClusterDriver(Protocol):
    """Operations on one cluster whose configuration and state live in `workdir`."""

    def up(self, workdir: Path, on_line: LineSink) -> RunResult: ...

    def remove(self, workdir: Path, on_line: LineSink) -> RunResult: ...

    def snapshot(self, workdir: Path, name: str, on_line: LineSink) -> RunResult: ...

    def restore(self, workdir: Path, name: str, on_line: LineSink) -> RunResult: ...

    def rotate_certificates(
        self, workdir: Path, on_line: LineSink, *, services: list[str], rotate_ca: bool = False
    ) -> RunResult: ...

    def get_state(self, workdir: Path, on_line: LineSink) -> RunResult: ...


def parse_line(line: str) -> tuple[str, str]:
    """(level, message) of one logrus line; unparsed lines are `info`."""
    match = _LOGRUS.search(line)
    if match:
        return match.group(1), _unquote(match.group(2))
    match = _LOGRUS_BARE.search(line)
    if match:
        return match.group(1), match.group(2)
    return "info", line


def _child_environment() -> dict[str, str]:
    """The worker's environment minus Prefect's settings (the API token among them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def _unquote(text: str) -> str:
    """Undo Go's %q escaping of a logrus message."""
    escapes = {"n": "\n", "t": "\t", "r": "\r"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), text)


@dataclass
class RkeDriver:
    """RKE1's `rke` CLI, run as a subprocess (docs/rke.md)."""

    binary: str = "rke"
    timeout_seconds: float = 3600.0
    ignore_docker_version: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def executable(self) -> str:
        """Absolute path of the configured binary, or a DriverError that says how to fix it."""
        path = shutil.which(self.binary)
        if path is None:
            raise DriverError(
                f"rke binary {self.binary!r} not found or not executable; install RKE v1.6.x "
                "or set rke-settings.binary to its absolute path"
            )
        return path

    def _common(self) -> list[str]:
        return ["--ignore-docker-version"] if self.ignore_docker_version else []

    def up(self, workdir: Path, on_line: LineSink) -> RunResult:
        return self.run(
            ["up", "--config", str(workdir / "cluster.yml"), *self._common()], workdir, on_line
        )

    def remove(self, workdir: Path, on_line: LineSink) -> RunResult:
        args = ["remove", "--force", "--config", str(workdir / "cluster.yml"), *self._common()]
        return self.run(args, workdir, on_line)

    def snapshot(self, workdir: Path, name: str, on_line: LineSink) -> RunResult:
        args = ["etcd", "snapshot-save", "--config", str(workdir / "cluster.yml"), "--name", name]
        return self.run([*args, *self._common()], workdir, on_line)

    def restore(self, workdir: Path, name: str, on_line: LineSink) -> RunResult:
        args = [
            "etcd",
            "snapshot-restore",
            "--config",
            str(workdir / "cluster.yml"),
            "--name",
            name,
        ]
        return self.run([*args, *self._common()], workdir, on_line)

    def rotate_certificates(
        self, workdir: Path, on_line: LineSink, *, services: list[str], rotate_ca: bool = False
    ) -> RunResult:
        args = ["cert", "rotate", "--config", str(workdir / "cluster.yml")]
        args += [a for s in services for a in ("--service", s)]
        args += ["--rotate-ca"] if rotate_ca else []
        return self.run([*args, *self._common()], workdir, on_line)

    def get_state(self, workdir: Path, on_line: LineSink) -> RunResult:
        args = ["util", "get-state-file", "--config", str(workdir / "cluster.yml")]
        return self.run([*args, *self._common()], workdir, on_line)

    def run(self, args: list[str], cwd: Path, on_line: LineSink) -> RunResult:
        """Run `rke <args>` in `cwd`, streaming redacted lines to `on_line`, with a hard timeout.

        Success is exit code 0 (never `-q`: it hides the fatal message). On timeout, or when
        the caller is interrupted, the whole process group is killed. rke runs in its own
        session, started through ``cluster_mgmt/die_with_parent.py`` so the kernel kills it if
        this process dies; that signal fires when the *thread* that started rke exits, so this
        method starts rke and waits for it in the calling thread. Whatever `on_line` raises,
        rke's output is drained to the end (a stalled pipe would block rke): the first error
        is kept in ``output_error`` and the run is not ok.
        """
        command = [self.executable(), *args]
        started = time.monotonic()
        process = subprocess.Popen(
            [*_tethered(), *command],
            cwd=cwd,
            env={**_child_environment(), **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        result = RunResult(
            command=[Path(command[0]).name, *args], exit_code=None, duration_seconds=0
        )
        reader = threading.Thread(target=self._pump, args=(process, result, on_line), daemon=True)
        reader.start()
        try:
            result.exit_code = process.wait(timeout=self.timeout_seconds)
        except subprocess.TimeoutExpired:
            result.timed_out = True
            _kill_group(process)
            result.exit_code = process.returncode
        except BaseException:
            _kill_group(process)
            raise
        finally:
            reader.join()  # the group is dead or done: its output ends; checkpoints finish
            result.duration_seconds = time.monotonic() - started
        result.error = self._failure(args[0], result)
        return result

    def _failure(self, operation: str, result: RunResult) -> str | None:
        """What went wrong, in one line: rke's own fatal message, else how it ended."""
        tail = f" (last lines: {' | '.join(result.last_lines)})" if result.last_lines else ""
        code = result.exit_code
        if result.timed_out:
            error = (
                f"rke {operation} did not finish within {self.timeout_seconds:g} s; killed{tail}"
            )
        elif code is not None and code < 0:
            error = f"rke {operation} was killed by {_signal_name(-code)}{tail}"
        elif code != 0:
            error = result.error or f"rke {operation} exited with {code}{tail}"
        else:
            error = None
        if result.output_error is None:
            return error
        problem = f"handling rke's output failed: {result.output_error}"
        return f"{error}; {problem}" if error else f"rke {operation} exited with 0, but {problem}"

    @staticmethod
    def _pump(process: subprocess.Popen, result: RunResult, on_line: LineSink) -> None:
        """Read rke's output to its end, whatever handling a line raises."""
        assert process.stdout is not None
        for raw in process.stdout:
            try:
                RkeDriver._take(raw, result, on_line)
            except Exception as exc:  # noqa: BLE001 - kept in the result; the pipe must drain
                if result.output_error is None:
                    result.output_error = redact(f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _take(raw: bytes, result: RunResult, on_line: LineSink) -> None:
        line = redact(raw.decode("utf-8", errors="replace").rstrip("\n"))
        if not line.strip():
            return
        level, message = parse_line(line)
        if level == "warning" and _ADDON_FAILURE in message:
            result.warnings.append(message)
        if level in ("error", "fatal"):
            result.error = message
        result.last_lines.append(message)
        on_line(level, message)


def _tethered() -> list[str]:
    """The argv prefix that runs a command under ``die_with_parent`` for this process.

    The wrapper runs by path in isolated mode (stdlib only): it works whatever the working
    directory or PYTHONPATH, and nothing in them can shadow what it imports.
    """
    return [sys.executable, "-I", str(_WRAPPER), str(os.getpid()), "--"]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the whole process group, SIGKILL whatever is left after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=KILL_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
