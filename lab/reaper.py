"""A watchdog that stops what a lab command started once that command is gone, however it went.

The command holds the write end of a pipe; the reaper, in a session of its own (terminal
signals do not reach it), reads from it the process groups the command owns. At end of file —
a clean exit, SIGTERM, or `kill -9` of the command — it stops those groups and every process
whose environment carries the command's marker (flow runs started by the worker live in
sessions of their own): SIGTERM, then SIGKILL after a grace period. Usage:
`with Reaper() as reaper: ...; reaper.track(process.pid)`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

MARKER = "CLUSTER_MGMT_LAB_RUN"


class Reaper:
    """Marks this process's future children and starts the watchdog that reaps them."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self._pipe: int | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> Self:
        os.environ[MARKER] = self.token
        read, self._pipe = os.pipe()  # not inherited by other children (PEP 446)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lab.reaper", self.token, str(os.getpid())],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(read)
        return self

    def track(self, pid: int) -> None:
        """Reap process group `pid` too (for children that rewrite their environment, as sshd
        does with its process title)."""
        if self._pipe is not None:
            os.write(self._pipe, f"{pid}\n".encode())

    def stop(self) -> None:
        """Reap what is left now and wait for the reaper."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self.process is not None:
            self.process.wait()
        os.environ.pop(MARKER, None)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (process group, environment) of every process we may signal."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] != "Z":  # a zombie is gone already; its parent has yet to reap it
                found[int(proc.name)] = (int(stat[2]), (proc / "environ").read_bytes())
    return found


def doomed(token: str, groups: set[int], spared: set[int]) -> list[int]:
    """Processes in `groups` or carrying the marker `token`, except `spared`."""
    marker = f"{MARKER}={token}".encode()
    return [
        pid
        for pid, (group, environ) in _processes().items()
        if pid not in spared and (group in groups or marker in environ.split(b"\0"))
    ]


def reap(token: str, groups: set[int], spared: set[int], grace: float = 10.0) -> None:
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while victims := doomed(token, groups, spared):
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.2)


def main() -> None:
    token, owner = sys.argv[1], int(sys.argv[2])
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups = {int(line) for line in sys.stdin if line.strip()}  # until the owner is gone
    reap(token, groups, spared={os.getpid(), owner})


if __name__ == "__main__":
    main()
