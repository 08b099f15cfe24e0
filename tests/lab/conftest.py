"""Fixtures for the lab's own tests: fresh lab nodes per test, the `lab-rke` executable."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lab.nodes import LabNodes

RKE = str(Path(sys.executable).parent / "lab-rke")
FIRST_ADDRESS = 40


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def tail(self) -> str:
        """The end of the output, for assertion messages."""
        return "\n".join(self.lines[-15:]) + "\n" + self.stderr


class Rke:
    """Runs `lab-rke` as a subprocess in a working directory, like the service does."""

    def __init__(self, workdir: Path, nodes: LabNodes) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.faults = workdir / "faults.json"

    def run(
        self, *args: str, stdin: str | None = None, faults: dict | None = None, cwd=None
    ) -> Run:
        env = dict(os.environ)
        env.pop("RKE_CONFIG", None)
        if faults is not None:
            import json

            self.faults.write_text(json.dumps(faults))
            env["LAB_RKE_FAULTS"] = str(self.faults)
        else:
            env.pop("LAB_RKE_FAULTS", None)
        proc = subprocess.run(
            [RKE, *args],
            cwd=cwd or self.workdir,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def config(self, name: str = "cluster.yml", roles=None, **extra) -> Path:
        """Write a cluster.yml for the lab nodes (`roles`: one role list per node)."""
        roles = roles or [["controlplane", "etcd"], ["worker"], ["worker"]]
        nodes = [
            {
                "address": n.address,
                "port": n.port,
                "user": self.nodes.user,
                "role": r,
            }
            for n, r in zip(self.nodes.nodes, roles, strict=False)
        ]
        data = {"nodes": nodes, "ssh_key_path": str(self.nodes.client_key_path), **extra}
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        return path


@pytest.fixture
def lab(tmp_path: Path):
    """Three lab nodes (real sshd), started for one test and stopped after it."""
    with LabNodes(tmp_path / "nodes", 3, first_address=FIRST_ADDRESS) as nodes:
        yield nodes


@pytest.fixture
def rke(tmp_path: Path, lab: LabNodes) -> Rke:
    workdir = tmp_path / "work"
    workdir.mkdir()
    return Rke(workdir, lab)
