"""Finding and stopping the processes a test started (through /proc: flow runs leave the tree)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants (flow runs live in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    doomed, queue = [], [root]
    while queue:
        pid = queue.pop()
        doomed.append(pid)
        queue.extend(children.get(pid, []))
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def started_by(root: int) -> dict[int, str]:
    """pid -> start time of `root`'s descendants and of every process carrying its reaper's
    marker (flow runs and the reaper leave the tree); other lab servers' are not ours."""
    from lab.reaper import MARKER

    parents, tokens, started = {}, {}, {}
    prefix = f"{MARKER}=".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            pid = int(proc.name)
            parents[pid], started[pid] = int(fields[1]), fields[19]
            for item in (proc / "environ").read_bytes().split(b"\0"):
                if item.startswith(prefix):
                    tokens[pid] = item
    found, queue = set(), [root]
    while queue:
        pid = queue.pop()
        found.add(pid)
        queue += [child for child, parent in parents.items() if parent == pid]
    ours = {tokens[pid] for pid in found if pid in tokens}
    marked = {pid for pid, token in tokens.items() if token in ours}
    return {pid: started[pid] for pid in (found | marked) - {root} if pid in started}


def cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b"(gone)"


def alive(processes: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in processes.items():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[19] == start and fields[0] != "Z":
                alive.append(pid)
    return alive
