"""Reliability trials: kill -9 at random instants (R1) and races of two operations (R2).

Both drive the real flows in their own processes against a Prefect server, lab nodes and the
lab rke, then check the promises the state store makes:

- R1: a provision or teardown is killed at a random instant (its `rke`, or the flow-run process
  itself) while the lab rke writes its state slowly. Afterwards every state file is complete,
  the cluster's CA is the one it had, and a rerun converges to READY (or DELETED).
- R2: two operations on one cluster start at once. `rke` never runs twice at the same time
  for a cluster (every rke call is logged with its start and end by a wrapper), and the
  loser is refused as busy or waits its turn.

Used by `benchmarks/reliability.py` (the figures) and `tests/test_reliability.py` (a short run).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cluster_mgmt.state import RKE_FILES, ClusterState, StateVolume
from cluster_mgmt.state_files import is_kubeconfig, is_rkestate, is_yaml_mapping

VALID = {"cluster.rkestate": is_rkestate, "kube_config_cluster.yml": is_kubeconfig}
VALID["cluster.yml"] = is_yaml_mapping

RUN = """
import json, sys
from cluster_mgmt.spec import ClusterSpec
from flows.provision import provision_cluster
from flows.teardown import teardown_cluster
op, blocks, spec = sys.argv[1], json.loads(sys.argv[2]), ClusterSpec.model_validate_json(sys.argv[3])
if op == "provision":
    state = provision_cluster(spec=spec, **blocks, return_state=True)
else:
    state = teardown_cluster(environment=spec.environment, name=spec.name, **blocks,
                             return_state=True)
print(json.dumps({"type": state.type.value, "message": state.message}), flush=True)
"""

TIMED_RKE = """#!{python}
import subprocess, sys, time, os, json
start = time.time()
code = subprocess.call([{rke!r}, *sys.argv[1:]])
with open({log!r}, "a") as log:
    log.write(json.dumps({{"cwd": os.getcwd(), "args": sys.argv[1:2], "start": start,
                          "end": time.time(), "code": code}}) + "\\n")
sys.exit(code)
"""


@dataclass
class Lab:
    """Where trials run: block names, the state root, the spec and the faults file."""

    blocks: dict[str, str]
    root: Path
    spec_json: str
    faults: Path
    environment: str
    name: str

    @property
    def cluster(self) -> ClusterState:
        return StateVolume(self.root).cluster(self.environment, self.name)

    def fault(self, **faults: object) -> None:
        self.faults.write_text(json.dumps(faults))

    def start(self, operation: str) -> subprocess.Popen:
        """A flow run of `operation` in its own process (as a worker's flow-run process)."""
        argv = [sys.executable, "-c", RUN, operation, json.dumps(self.blocks), self.spec_json]
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "LAB_RKE_FAULTS": str(self.faults)},
        )

    def run(self, operation: str, timeout: float = 300) -> dict:
        """Run `operation` to its end; its final state type and message."""
        process = self.start(operation)
        out, _ = process.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"type": "CRASHED", "message": out}


@dataclass
class Tally:
    """What the trials found."""

    trials: int = 0
    lost_or_corrupt: int = 0
    ca_changed: int = 0
    not_converged: int = 0
    interleavings: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, what: str, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self.problems.append(what)


def _ca(cluster: ClusterState) -> str | None:
    text = cluster.read_text("cluster.rkestate") if cluster.dir.exists() else None
    if text is None:
        return None
    bundle = json.loads(text)["desiredState"]["certificatesBundle"]
    return bundle["kube-ca"]["certificatePEM"]


def _files_complete(cluster: ClusterState) -> list[str]:
    """Names of RKE files present on the volume that are not complete."""
    if not cluster.dir.exists():
        return []
    return [
        n for n in RKE_FILES if (d := cluster.read_text(n)) is not None and not VALID[n](d.encode())
    ]


def _pids(root: Path, match: Callable[[list[bytes], Path], bool]) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        if cwd.is_relative_to(root) and match(cmd, cwd):
            pids.append(int(proc.name))
    return pids


def rke_pids(root: Path) -> list[int]:
    """`lab-rke` processes running in a staging directory under `root`."""

    def is_rke(cmd: list[bytes], cwd: Path) -> bool:
        return cwd.name.startswith(".staging-") and any(b"lab-rke" in c for c in cmd[:3])

    return _pids(root, is_rke)


TARGETS = ("rke", "flow-run process")


def r1_trial(lab: Lab, rng: random.Random, tally: Tally, targets: tuple[str, ...] = TARGETS) -> str:
    """One kill -9 trial; returns what was killed, when.

    Killing the flow-run process leaves its Prefect lease held until it expires (about 75 s),
    so such a trial's rerun waits that long, as an operator's would.
    """
    cluster = lab.cluster
    exists = cluster.dir.exists() and cluster.read_text("cluster.rkestate") is not None
    operation = rng.choice(["provision", "teardown"]) if exists else "provision"
    target = rng.choice(targets)
    if operation == "provision" and exists:
        cluster.write_status("FAILED", "provision", "trial", "interrupted")  # resume: rke up
    ca_before = _ca(cluster)
    lab.fault(slow_state_write=1.0)
    process = lab.start(operation)
    deadline = time.monotonic() + 60
    victims: list[int] = []
    while not victims and process.poll() is None and time.monotonic() < deadline:
        victims = rke_pids(lab.root)
        time.sleep(0.02)
    delay = rng.uniform(0, 4.0)
    time.sleep(delay)
    if target == "flow-run process":
        victims = [process.pid]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.communicate(timeout=120)
    tally.trials += 1
    broken = _files_complete(cluster)
    if broken:
        tally.fail(f"{operation}: incomplete {broken} after kill of {target}", "lost_or_corrupt")
    ca_after = _ca(cluster)
    if ca_before and ca_after and ca_after != ca_before:
        tally.fail(f"{operation}: CA changed after kill of {target}", "ca_changed")
    lab.fault()
    if cluster.dir.exists() and cluster.read_status() and operation == "provision":
        cluster.write_status("FAILED", "provision", "trial", "interrupted")
    outcome = lab.run(operation)
    ok = outcome["type"] == "COMPLETED"
    if not ok and operation == "teardown" and not cluster.dir.exists():
        ok = True  # the killed teardown had archived it already
    if not ok:
        tally.fail(
            f"{operation} rerun after kill of {target}: {outcome['message']}", "not_converged"
        )
    ca_final = _ca(cluster)
    if ca_before and ca_final and ca_final != ca_before:
        tally.fail(f"{operation}: CA changed on the rerun", "ca_changed")
    return f"{operation}, {target} killed {delay:.2f} s into rke"


def timed_rke(workdir: Path, rke: str) -> tuple[str, Path]:
    """A wrapper `rke` that logs each call's start and end, and the log it writes."""
    log = workdir / "rke-calls.jsonl"
    script = workdir / "timed-rke"
    script.write_text(
        textwrap.dedent(TIMED_RKE.format(python=sys.executable, rke=rke, log=str(log)))
    )
    script.chmod(0o755)
    return str(script), log


def r2_race(lab: Lab, log: Path, rng: random.Random, tally: Tally) -> str:
    """Two operations on one cluster at once; rke calls must never overlap."""
    cluster = lab.cluster
    exists = cluster.dir.exists() and cluster.read_text("cluster.rkestate") is not None
    pair = rng.choice(
        [("provision", "provision"), ("provision", "teardown"), ("teardown", "teardown")]
        if exists
        else [("provision", "provision")]
    )
    if exists and "provision" in pair:
        cluster.write_status("FAILED", "provision", "race", "interrupted")  # rke up will run
    lab.fault(pause_at="certs", pause_seconds=0.5)
    processes = [lab.start(op) for op in pair]
    for process in processes:
        process.communicate(timeout=300)
    tally.trials += 1
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    calls.sort(key=lambda c: c["start"])
    for first, second in itertools.pairwise(calls):
        if second["start"] < first["end"]:
            tally.fail(f"{pair}: rke calls overlapped", "interleavings")
    broken = _files_complete(cluster)
    if broken:
        tally.fail(f"{pair}: incomplete {broken}", "lost_or_corrupt")
    lab.fault()
    return f"{pair[0]} + {pair[1]}: {len(calls)} rke call(s)"
