"""Tasks: RKE commands run in a staging copy of the cluster's state, promoted afterwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cluster_mgmt.driver import ClusterDriver, RunResult
from cluster_mgmt.keyfile import private_key_file
from cluster_mgmt.rke_config import with_key_path
from cluster_mgmt.state import ClusterState, StateError

WROTE_FILE = ("Successfully Deployed state file at", "Successfully Deployed local admin kubeconfig")
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.ERROR,
    "panic": logging.CRITICAL,
}


@dataclass
class RkeOutcome:
    """A secret-free account of one RKE command and what it left on the volume."""

    result: RunResult
    promoted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    checkpoint_error: str | None = None

    @property
    def summary(self) -> str:
        if self.result.ok:
            text = f"{self.result.name} succeeded in {self.result.duration_seconds:.1f} s"
        else:
            text = f"{self.result.name} failed: {self.result.error}"
        if self.result.warnings:
            text += "; warnings: " + "; ".join(self.result.warnings)
        if self.rejected:
            text += (
                f"; unreadable output kept in history, previous kept: {', '.join(self.rejected)}"
            )
        if self.checkpoint_error:
            text += (
                f"; keeping rke's files during the run failed ({self.checkpoint_error}), "
                "they were kept when it ended"
            )
        return text


COMMANDS = ("up", "remove", "snapshot", "restore", "rotate_certificates", "get_state")
"""The ClusterDriver methods run_rke runs."""


@task(name="rke", cache_policy=NO_CACHE)
def run_rke(
    cluster: ClusterState,
    command: str,
    config_text: str,
    private_key: str,
    driver: ClusterDriver,
    *,
    label: str | None = None,
    **arguments: Any,
) -> RkeOutcome:
    """Run one RKE command on the cluster, in a staging copy promoted atomically afterwards.

    Args:
        cluster: The cluster's state on the volume (its lock must be held).
        command: The ClusterDriver method: one of COMMANDS.
        config_text: cluster.yml to run (its key path is replaced by this run's key file).
        private_key: The nodes' SSH key, written to a 0600 file outside the volume meanwhile.
        driver: The cluster driver.
        label: Names the history copy and staging directory (a DNS label); default `command`.
        arguments: The method's own keyword arguments (`name`, `services`, `rotate_ca`).

    Returns:
        The command's result and which files were promoted or rejected.
    """
    logger = get_run_logger()
    checkpoint_errors: list[str] = []
    result: RunResult | None = None
    stage: Path | None = None

    def log_line(level: str, message: str) -> None:
        logger.log(LEVELS.get(level, logging.INFO), "rke: %s", message)
        if stage is not None and message.startswith(WROTE_FILE):
            # RKE rewrites its state in place later in the run; keep each complete write.
            # A failure here must not stop rke: it is logged and retried when rke ends.
            try:
                cluster.promote(stage, checkpoint=True)
            except Exception as exc:  # noqa: BLE001 - any error: ENOSPC, EROFS, EIO, bad status
                checkpoint_errors.append(f"{type(exc).__name__}: {exc}")
                logger.error("rke: keeping what rke wrote failed (%s); retried when rke ends", exc)

    try:
        if command not in COMMANDS:
            raise ValueError(f"unknown driver command {command!r}: use one of {COMMANDS}")
        label = label or command.replace("_", "-")
        with private_key_file(private_key) as key_path, cluster.staging(label) as stage:
            (stage / "cluster.yml").write_text(with_key_path(config_text, key_path))
            (stage / "cluster.yml").chmod(0o600)
            result = getattr(driver, command)(stage, on_line=log_line, **arguments)
    except Exception as exc:
        if result is None:
            raise
        raise StateError(_not_kept(result, exc, checkpoint_errors, stage)) from exc
    promotion = cluster.last_promotion
    return RkeOutcome(
        result,
        list(promotion.promoted),
        list(promotion.rejected),
        checkpoint_errors[0] if checkpoint_errors else None,
    )


def _not_kept(
    result: RunResult, error: Exception, checkpoint_errors: list[str], stage: Path | None
) -> str:
    """One line: how rke ended, why its files are not on the volume, where they wait."""
    ended = (
        f"{result.name} succeeded (exit code 0)"
        if result.ok
        else f"{result.name} failed: {result.error}"
    )
    text = f"{ended}, but keeping what it wrote on the state volume failed: {error}"
    if checkpoint_errors:
        text += f"; it failed during the run too: {checkpoint_errors[0]}"
    return (
        f"{text}. Its files stay in {stage} and are kept by the next operation on this "
        "cluster once the volume is fixed"
    )
