"""Fault injection: `LAB_RKE_FAULTS` names a JSON file read once at start (see lab.rke)."""

from __future__ import annotations

import json
import os
import time

STEPS = (
    "init",
    "ssh",
    "ports",
    "certs",
    "etcd",
    "controlplane",
    "state",
    "worker",
    "addons",
    "remove",
    "snapshot",
    "restore",
)


class Faults:
    def __init__(self, data: dict | None = None) -> None:
        data = data or {}
        self.fail_at: str | None = data.get("fail_at") or None
        self.pause_at: str | None = data.get("pause_at") or None
        self.pause_seconds = float(data.get("pause_seconds", 30))
        self.addon_job_warning = data.get("addon_job_warning") or False
        slow = data.get("slow_state_write", False)
        self.slow_state_write = float(3.0 if slow is True else slow or 0)
        self.k8s_timeout_seconds = float(data.get("k8s_timeout_seconds", 30))

    @classmethod
    def load(cls) -> Faults:
        path = os.environ.get("LAB_RKE_FAULTS")
        if not path:
            return cls()
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            return cls()
        if not text.strip():
            return cls()
        return cls(json.loads(text))

    def checkpoint(self, step: str) -> bool:
        """Pause if asked to; True when the run must fail at this step."""
        if self.pause_at == step:
            time.sleep(self.pause_seconds)
        return self.fail_at == step


faults = Faults()
