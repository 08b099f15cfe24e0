"""Exec a command that the kernel SIGKILLs when the process that started it dies.

Usage: ``python -I die_with_parent.py <parent-pid> -- <command> [args...]`` (stdlib only: it
runs by path, in isolated mode, whatever the working directory).

The driver starts rke through this wrapper instead of running Python between fork and exec
(``preexec_fn``), which is unsafe in a threaded process. The wrapper asks for
``PR_SET_PDEATHSIG`` = SIGKILL (it survives ``execv``), then checks that its parent is still
``<parent-pid>``: a parent that died before the request was made would otherwise never signal
the child. Only then does it replace itself with the command.

The death signal fires when the *thread* that forked the child exits, so the thread that starts
the command must be the one that waits for it (``RkeDriver.run`` does both).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_USAGE = 2
EXIT_ORPHANED = 125  # the parent died before the command started: nothing ran
EXIT_CANNOT_EXEC = 126

USAGE = "usage: python -I die_with_parent.py <parent-pid> -- <command> [args...]"


def main(argv: list[str]) -> int:
    """Set the death signal, check the parent, exec the command; return only on failure."""
    if len(argv) < 3 or not argv[0].isdigit() or argv[1] != "--":
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    parent, command = int(argv[0]), argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = os.strerror(ctypes.get_errno())
        print(f"die_with_parent: prctl(PR_SET_PDEATHSIG) failed: {error}", file=sys.stderr)
        return EXIT_CANNOT_EXEC
    if os.getppid() != parent:
        return EXIT_ORPHANED
    try:
        os.execv(command[0], command)  # noqa: S606 - an argv, no shell: the point
    except OSError as exc:
        print(f"die_with_parent: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
    return EXIT_CANNOT_EXEC


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
