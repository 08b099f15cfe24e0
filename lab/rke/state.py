"""The local files rke writes: `<name>.rkestate` and `kube_config_<name>` (cluster/state.go,
pki/deploy.go). Plain writes, like Go's os.WriteFile: open with O_TRUNC (mode 0600 when
created), write, close. No temporary file, no fsync, no rename: a kill can leave it torn.
"""

from __future__ import annotations

import json
import os
import time

from lab.rke.errors import RkeError
from lab.rke.faults import faults
from lab.rke.logrus import log


def go_json(value) -> str:
    """encoding/json MarshalIndent(v, "", "  "): HTML characters escaped as \\u003c etc."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def write_file(path: str, data: bytes, slow: float = 0.0) -> None:
    """os.WriteFile(path, data, 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if slow > 0:
            chunk = 512
            pieces = max(1, (len(data) + chunk - 1) // chunk)
            pause = slow / pieces
            for i in range(0, len(data), chunk):
                os.write(fd, data[i : i + chunk])
                time.sleep(pause)
        else:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
    finally:
        os.close(fd)


def empty_state() -> dict:
    return {"desiredState": {}, "currentState": {}}


def _go_json_error(text: str, exc: json.JSONDecodeError) -> str:
    rest = text[exc.pos :].strip()
    if not rest:
        return "unexpected end of JSON input"
    ch = rest[0]
    return f"invalid character '{ch}' looking for beginning of value"


def read_state(path: str) -> tuple[dict, str | None]:
    """cluster.ReadStateFile: (state, error text); the state is empty on any error."""
    full = os.path.abspath(path)
    try:
        with open(full, "rb") as fh:
            raw = fh.read()
    except IsADirectoryError:
        return empty_state(), f"[state] failed to read state file: read {full}: is a directory"
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        return empty_state(), f"[state] Can not find RKE state file: open {full}: {reason}"
    text = raw.decode(errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return (
            empty_state(),
            f"[state] failed to unmarshal the state file: {_go_json_error(text, exc)}",
        )
    if not isinstance(data, dict):
        return (
            empty_state(),
            (
                "[state] failed to unmarshal the state file: json: cannot unmarshal "
                f"{type(data).__name__} into Go value of type cluster.FullState"
            ),
        )
    data.setdefault("desiredState", {})
    data.setdefault("currentState", {})
    for key in ("desiredState", "currentState"):
        if not isinstance(data[key], dict):
            data[key] = {}
    return data, None


def _prune(state: dict) -> dict:
    """omitempty on State: nil rkeConfig, empty bundle, empty encryptionConfig disappear."""
    out = {}
    for key in ("rkeConfig", "certificatesBundle", "encryptionConfig"):
        value = state.get(key)
        if value:
            out[key] = value
    return out


def write_state(path: str, state: dict) -> None:
    """FullState.WriteStateFile."""
    data = {
        "desiredState": _prune(state.get("desiredState") or {}),
        "currentState": _prune(state.get("currentState") or {}),
    }
    text = go_json(data)
    log.trace(f"Writing state file: {text}")
    try:
        write_file(path, text.encode(), faults.slow_state_write)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise RkeError(f"[state] Failed to write state file: open {path}: {reason}") from None
    log.info(f"Successfully Deployed state file at [{path}]")


def deploy_admin_config(text: str, path: str) -> None:
    """pki.DeployAdminConfig."""
    if not text:
        log.info("kubeConfig is empty")
        return
    log.debug(f"Deploying admin Kubeconfig locally at [{path}]")
    try:
        write_file(path, text.encode())
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise RkeError(
            f"Failed to redeploy local admin config with new host: Failed to create local admin "
            f"kubeconfig file: open {path}: {reason}"
        ) from None
    log.info(f"Successfully Deployed local admin kubeconfig at [{path}]")


def remove_admin_config(path: str) -> None:
    log.info(f"Removing local admin Kubeconfig: {path}")
    try:
        os.remove(path)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        log.warning(f"Failed to remove local admin Kubeconfig file: remove {path}: {reason}")
        return
    log.info("Local admin Kubeconfig removed successfully")


def remove_state_file(path: str) -> None:
    log.info(f"Removing state file: {path}")
    try:
        os.remove(path)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        log.warning(f"Failed to remove state file: remove {path}: {reason}")
        return
    log.info("State file removed successfully")


def replace_with_backup(path: str, prefix: str) -> None:
    """util.ReplaceFileWithBackup: move the file to `./<prefix><random>` in the CWD."""
    if not os.path.exists(path):
        return
    name = _create_temp(prefix)
    os.rename(path, name)
    log.info(f"Moved file [{path}] to new location [{name}] as back-up")


def copy_with_prefix(path: str, prefix: str) -> None:
    """util.CopyFileWithPrefix: copy the file to `./<prefix><random>` in the CWD."""
    if not os.path.exists(path):
        return
    import shutil

    name = _create_temp(prefix)
    shutil.copyfile(path, name)
    log.info(f"Copied file [{path}] to new location [{name}] as back-up")


def _create_temp(prefix: str) -> str:
    """os.CreateTemp(".", prefix): `<prefix><random decimal>`, created 0600, exclusively."""
    import secrets

    while True:
        name = f"{prefix}{secrets.randbits(32)}"
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return name
