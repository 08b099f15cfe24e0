"""Crash-safe file primitives: a kill -9 at any instant leaves every file old or new."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
TMP_MARK = ".tmp-"
DISCARD_PREFIX = ".discard-"
BUILD_PREFIX = ".build-"


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """True for the temporary names ``atomic_write`` uses (``.<file>.tmp-<random>``)."""
    return name.startswith(".") and TMP_MARK in name[1:]


def atomic_write(path: Path, data: bytes | str, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename, fsync the dir.

    The temp file is created with O_EXCL and gets its final mode before any data is written.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}{TMP_MARK}{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each one we create with mode 0700."""
    path = Path(path)
    if path.is_dir():
        return
    make_private_dirs(path.parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    os.chmod(path, DIR_MODE)
    fsync_dir(path.parent)


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a fully built directory into place and make the rename durable."""
    os.chmod(tmp, DIR_MODE)
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def write_dir(final: Path, files: Mapping[str, bytes], *, make_parents: bool = True) -> Path:
    """Create directory ``final`` holding ``files`` (relative name -> content), all or nothing.

    It is built under a hidden ``.build-`` name next to ``final`` and renamed into place, so a
    half-written directory never carries the final name. With ``make_parents`` False a missing
    parent is FileNotFoundError: nothing is created above ``final``.
    """
    if make_parents:
        make_private_dirs(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=final.parent))
    try:
        for rel, data in files.items():
            target = tmp / rel
            make_private_dirs(target.parent)
            atomic_write(target, data)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def discard_dir(path: Path) -> None:
    """Remove a directory so that an interrupted removal never leaves it half there.

    It is first renamed to a hidden ``.discard-`` name (atomic), then deleted.
    """
    hidden = path.with_name(f"{DISCARD_PREFIX}{path.name}")
    if hidden.exists():
        shutil.rmtree(hidden)
    os.rename(path, hidden)
    fsync_dir(path.parent)
    shutil.rmtree(hidden)


def remove_debris(parent: Path) -> None:
    """Delete what an interrupted writer left in ``parent``: temp files, build and discard dirs."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        hidden_dir = entry.is_dir() and not entry.is_symlink()
        if hidden_dir and entry.name.startswith((BUILD_PREFIX, DISCARD_PREFIX)):
            shutil.rmtree(entry)
        elif is_temp_name(entry.name) and entry.is_file():
            entry.unlink()
