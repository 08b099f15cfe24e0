"""Reliability trials: kill -9 at random instants (R1) and races of two operations (R2).

Both run the flows as operators do: a flow run is started through the Prefect API from a
deployment (`create_flow_run_from_deployment`) and a process worker runs it, against lab nodes
(real sshd) and the lab rke. A wrapper around rke logs each call with its flow run, start and
end. Then they check the promises the state store makes:

- R1: a provision or teardown gets SIGKILL at a random instant: its `rke` (anywhere in rke's
  run), its flow-run process, or its worker together with everything the worker started (as
  when the worker's machine or container dies), both anywhere from the flow-run process's start
  to the run's final state, while the lab rke writes its state slowly. A trial counts only if
  its kill landed on a live process while the operation was running; kills are counted per
  target and per phase. Afterwards every RKE file the cluster had is still there and complete,
  its CA is the one it had, and a rerun through the API converges (READY, or DELETED).
- R2: two operations on one cluster are started through the API at once. rke never runs twice
  at once for the cluster, rke ran for at least one of them, and each run's outcome is one of:
  ran rke; waited, then had nothing to do; waited, then found the cluster torn down; refused
  as busy. Anything else fails the race.

Used by `benchmarks/reliability.py` (the figures) and `tests/test_reliability.py` (a short run).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.runner import EntrypointType
from prefect.workers.process import ProcessWorker

import cluster_mgmt.die_with_parent
from blocks import RkeSettings
from cluster_mgmt.phases import Phase
from cluster_mgmt.state import RKE_FILES, ClusterState, StateError, StateVolume
from cluster_mgmt.state_files import is_kubeconfig, is_rkestate, is_yaml_mapping
from flows.provision import provision_cluster
from flows.teardown import teardown_cluster
from lab.embedded import EmbeddedWorker

VALID = {"cluster.rkestate": is_rkestate, "kube_config_cluster.yml": is_kubeconfig}
VALID["cluster.yml"] = is_yaml_mapping
FLOWS = {"provision": provision_cluster, "teardown": teardown_cluster}
RKE_COMMAND = {"provision": "up", "teardown": "remove"}
TARGETS = ("rke", "flow-run process", "worker")
FLOW_RUN_ENV = b"PREFECT__FLOW_RUN_ID="

# rke as the flows see it: logs each call (its flow run, start, end, exit), runs the real one
# tethered to itself (so it dies with the wrapper, as rke dies with its flow-run process) and
# ends the way it ended (a SIGKILLed rke is a SIGKILLed "rke" to the driver).
TIMED_RKE = """#!{python}
import json, os, signal, subprocess, sys, time

def flow_run():
    pid = os.getppid()
    while pid > 1:
        try:
            env = open(f"/proc/{{pid}}/environ", "rb").read().split(b"\\0")
            stat = open(f"/proc/{{pid}}/stat").read()
        except OSError:
            return None
        for item in env:
            if item.startswith({marker!r}):
                return item.split(b"=", 1)[1].decode()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return None

def log(**entry):
    with open({log!r}, "a") as out:
        out.write(json.dumps(entry) + "\\n")

run, start = flow_run(), time.time()
log(event="start", run=run, pid=os.getpid(), args=sys.argv[1:2], start=start)
tether = [sys.executable, "-I", {tether!r}, str(os.getpid()), "--"]
code = subprocess.call([*tether, {rke!r}, *sys.argv[1:]])
log(event="end", run=run, pid=os.getpid(), args=sys.argv[1:2], start=start, end=time.time(),
    code=code)
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def timed_rke(workdir: Path, rke: str) -> tuple[str, Path]:
    """A wrapper `rke` that logs each call, and the log it writes."""
    log = workdir / "rke-calls.jsonl"
    script = workdir / "timed-rke"
    tether = cluster_mgmt.die_with_parent.__file__
    text = TIMED_RKE.format(
        python=sys.executable, rke=rke, log=str(log), tether=tether, marker=FLOW_RUN_ENV
    )
    script.write_text(textwrap.dedent(text))
    script.chmod(0o755)
    return str(script), log


# -- processes ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """A live process's state letter and parent pid; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has ended)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in "ZX"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (stat := _stat(int(proc.name))):
            children.setdefault(stat[1], []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill(pids: list[int]) -> list[int]:
    """SIGKILL each live process of `pids`; the ones the signal reached while they ran."""
    landed = []
    for pid in pids:
        if not alive(pid):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        landed.append(pid)
    return landed


def flow_run_pid(run_id: UUID) -> int | None:
    """The flow-run process of `run_id` (the engine, below any starter), if it runs."""
    marker = FLOW_RUN_ENV + str(run_id).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    engines = [p for p in found if alive(p) and not set(descendants(p)) & set(found)]
    return engines[0] if engines else None


def rke_pids(root: Path) -> list[int]:
    """`lab-rke` processes running in a staging directory under `root`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        staged = cwd.is_relative_to(root) and cwd.name.startswith(".staging-")
        if staged and any(b"lab-rke" in c for c in cmd[:3]) and alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


# -- the service: a pool, its worker(s), deployments of provision and teardown ----------------


@dataclass
class Service:
    """A work pool with its workers and deployments of provision and teardown on it."""

    pool: str
    deployments: dict[str, UUID]
    workers: list[EmbeddedWorker]
    faults: Path
    rke_log: Path
    rke_settings: str  # the rke-settings block whose binary is the logging wrapper

    def fault(self, **faults: object) -> None:
        self.faults.write_text(json.dumps(faults))

    def start(self, operation: str, parameters: dict) -> UUID:
        """A flow run of `operation` from its deployment, as an API client starts one."""
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(
                self.deployments[operation], parameters=parameters
            )
        return run.id

    def wait(self, run_id: UUID, timeout: float = 300) -> FlowRun:
        """The run once final (or as it is after `timeout`)."""
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while True:
                run = client.read_flow_run(run_id)
                if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                    return run
                time.sleep(0.25)

    def is_final(self, run_id: UUID) -> bool:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        return bool(state and state.is_final())

    def rke_calls(self, run_id: UUID | None = None) -> list[dict]:
        """The wrapper's log entries (of one flow run)."""
        text = self.rke_log.read_text() if self.rke_log.exists() else ""
        calls = []
        for line in text.splitlines():
            try:
                calls.append(json.loads(line))
            except ValueError:
                continue  # a wrapper killed while writing its line
        return [c for c in calls if run_id is None or c["run"] == str(run_id)]


@contextmanager
def service(
    workdir: Path,
    api_url: str,
    auth_string: str,
    rke: str,
    rke_settings: str,
    extra_env: dict[str, str],
    workers: int = 1,
) -> Iterator[Service]:
    """A fresh process pool, `workers` workers on it (polling every second), the deployments,
    and the rke-settings block `rke_settings` pointing at a logging wrapper of `rke`."""
    workdir.mkdir(parents=True, exist_ok=True)
    binary, log = timed_rke(workdir, rke)
    RkeSettings(binary=binary).save(rke_settings, overwrite=True)
    pool = f"reliability-{os.urandom(3).hex()}"
    with get_client(sync_client=True) as client:
        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(
            WorkPoolCreate(name=pool, type="process", base_job_template=template)
        )
    deployments = {
        op: flow.to_deployment(
            name=pool, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH
        ).apply()
        for op, flow in FLOWS.items()
    }
    faults = workdir / "faults.json"
    env = {**extra_env, "LAB_RKE_FAULTS": str(faults)}
    started = [
        EmbeddedWorker(
            home=workdir / f"worker-{i}",
            api_url=api_url,
            auth_string=auth_string,
            pool=pool,
            query_seconds=1.0,
            extra_env=env,
            name=f"{pool}-{i}",
        ).start()
        for i in range(workers)
    ]
    try:
        yield Service(pool, deployments, started, faults, log, rke_settings)
    finally:
        for worker in started:
            worker.stop(grace=5)


@dataclass
class Lab:
    """One cluster the trials run on, through a service."""

    service: Service
    blocks: dict[str, str]
    root: Path
    spec: dict
    durations: dict[str, float] = field(default_factory=dict)  # see calibrate()

    @property
    def cluster(self) -> ClusterState:
        return StateVolume(self.root).cluster(self.spec["environment"], self.spec["name"])

    def parameters(self, operation: str) -> dict:
        if operation == "provision":
            return {"spec": self.spec, **self.blocks}
        return {"environment": self.spec["environment"], "name": self.spec["name"], **self.blocks}

    def start(self, operation: str) -> UUID:
        return self.service.start(operation, self.parameters(operation))

    def run(self, operation: str, timeout: float = 300) -> FlowRun:
        """Run `operation` through the API to its end; the flow run as it ended."""
        return self.service.wait(self.start(operation), timeout)


def has_state(cluster: ClusterState) -> bool:
    return cluster.dir.exists() and cluster.read_text("cluster.rkestate") is not None


def calibrate(lab: Lab, operations: tuple[str, ...] = ("provision", "teardown")) -> None:
    """Time `operations` (slow state writes on), unkilled, in turn: where kill instants are
    drawn from. With the default, leaves no cluster."""
    lab.service.fault(slow_state_write=1.0)
    for operation in operations:
        run_id = lab.start(operation)
        started = _wait_for(lambda r=run_id: flow_run_pid(r))
        final = lab.service.wait(run_id)
        if not (final.state and final.state.is_completed()):
            raise RuntimeError(f"calibration {operation} did not complete: {final.state}")
        lab.durations[operation] = final.state.timestamp.timestamp() - started
        calls = [c for c in lab.service.rke_calls(run_id) if c["event"] == "end"]
        lab.durations[RKE_COMMAND[operation]] = max(c["end"] - c["start"] for c in calls)
    lab.service.fault()


def _rke_started(lab: Lab, run_id: UUID, timeout: float = 300) -> bool:
    """Wait for the run's rke; False if the run ended without one."""
    deadline = time.monotonic() + timeout
    while not rke_pids(lab.root):
        if int(time.monotonic() * 50) % 50 == 0 and lab.service.is_final(run_id):
            return False  # about once a second
        if time.monotonic() > deadline:
            raise TimeoutError("the run never started rke")
        time.sleep(0.02)
    return True


def _wait_for(probe, timeout: float = 120, every: float = 0.02) -> float:
    """Poll `probe` until it is truthy; the wall-clock time it became so."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError("the run never got that far")
        time.sleep(every)
    return time.time()


# -- what the trials found ----------------------------------------------------------------


@dataclass
class Tally:
    """What the trials found. A trial or race counts only once checked in full."""

    trials: int = 0
    missed: int = 0  # R1 kills that did not land: not counted
    lost_or_corrupt: int = 0
    ca_changed: int = 0
    not_converged: int = 0
    interleavings: int = 0
    no_rke: int = 0  # R2 races where rke ran for neither run
    bad_outcomes: int = 0  # R2 runs whose outcome is none of the allowed ones
    by_target: Counter = field(default_factory=Counter)
    by_phase: Counter = field(default_factory=Counter)
    by_operation: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def fail(self, what: str, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self.problems.append(what)


def _ca(directory: Path) -> str | None:
    try:
        text = (directory / "cluster.rkestate").read_text()
    except OSError:
        return None
    bundle = json.loads(text)["desiredState"]["certificatesBundle"]
    return bundle["kube-ca"]["certificatePEM"]


def files_problems(directory: Path, had: set[str]) -> list[str]:
    """What is wrong with a cluster's RKE files: damaged ones, and ones of `had` (the files it
    had before) that are missing. A directory that is gone is checked by the caller."""
    problems = []
    for name in RKE_FILES:
        try:
            data = (directory / name).read_bytes()
        except FileNotFoundError:
            if name in had:
                problems.append(f"missing {name}")
            continue
        if not VALID[name](data):
            problems.append(f"damaged {name}")
    return problems


def phase_of(lab: Lab, operation: str, run_id: UUID) -> str:
    """Where the run is: starting (blocks, policy, lock), preflight, staging (before rke),
    rke, after rke (promotion, host keys, leftovers), configure, finishing."""
    cluster = lab.cluster
    started = [c for c in lab.service.rke_calls(run_id) if c["event"] == "start"]
    if not cluster.dir.exists():
        return "finishing" if started else "starting"
    try:
        status = cluster.read_status()
    except StateError:
        return "unknown (status being written)"
    if status is None or status.flow_run_id != str(run_id):
        return "starting"
    if status.phase == Phase.CONFIGURING:
        return "configure"
    if status.phase in (Phase.READY, Phase.DELETED):
        return "finishing"
    if rke_pids(lab.root):
        return "rke"
    if status.message == "checking nodes":
        return "preflight"
    return "after rke" if started else "staging"


def _kill_at_random_instant(
    lab: Lab, operation: str, target: str, run_id: UUID, rng: random.Random
) -> tuple[bool, str, float]:
    """Kill `target` of the run at a random instant; whether it landed, the phase, the instant."""
    process_started = _wait_for(lambda: flow_run_pid(run_id))
    if target == "rke" and not _rke_started(lab, run_id):
        return False, "ended before rke", 0.0
    if target == "rke":
        instant = rng.uniform(0, lab.durations[RKE_COMMAND[operation]])
        time.sleep(instant)
    else:
        instant = rng.uniform(0, lab.durations[operation])
        time.sleep(max(0.0, process_started + instant - time.time()))
    if lab.service.is_final(run_id):
        return False, "ended", instant
    phase = phase_of(lab, operation, run_id)
    if target == "rke":
        return bool(kill(rke_pids(lab.root))), phase, instant
    engine = flow_run_pid(run_id)
    if engine is None:
        return False, phase, instant
    if target == "flow-run process":
        return bool(kill([engine])), phase, instant
    worker = next(w for w in lab.service.workers if engine in descendants(w.process.pid))
    pid = worker.process.pid
    landed = kill([pid, *descendants(pid)])  # all at once, as when its container dies
    worker.process.wait(timeout=30)
    worker.start()
    return pid in landed and engine in landed, phase, instant


def r1_trial(
    lab: Lab,
    rng: random.Random,
    tally: Tally,
    targets: tuple[str, ...] = TARGETS,
    operations: tuple[str, ...] = ("provision", "teardown"),
) -> str:
    """One kill -9 trial (counted only if the kill landed); what was killed, when, where.

    A killed flow-run process or worker leaves the cluster's Prefect lease held until it
    expires (about 75 s): the rerun waits that long, as an operator's would.
    """
    cluster = lab.cluster
    exists = has_state(cluster)
    operation = rng.choice(operations) if exists else "provision"
    target = rng.choice(targets)
    if operation == "provision" and exists:
        cluster.write_status("FAILED", "provision", "trial", "interrupted")  # resume: rke up
    had = {n for n in RKE_FILES if cluster.read_text(n) is not None} if exists else set()
    ca_before = _ca(cluster.dir)
    lab.service.fault(slow_state_write=1.0)
    run_id = lab.start(operation)
    landed, phase, instant = _kill_at_random_instant(lab, operation, target, run_id, rng)
    what = f"{operation}, {target} killed {instant:.2f} s in ({phase})"
    if not landed:
        lab.service.wait(run_id)  # let it finish; the next trial starts from where it left
        lab.service.fault()
        tally.missed += 1
        return f"{what}: missed, not counted"
    if target != "worker":  # a worker's runs stay RUNNING in the API: nobody reports them
        lab.service.wait(run_id, timeout=120)
    tally.trials += 1
    tally.by_target[target] += 1
    tally.by_phase[phase] += 1
    tally.by_operation[operation] += 1
    problems = files_problems(cluster.dir, had) if cluster.dir.exists() else []
    if problems:
        tally.fail(f"{what}: {', '.join(problems)}", "lost_or_corrupt")
    ca_after = _ca(cluster.dir)
    reference = ca_before or ca_after
    if ca_before and ca_after and ca_after != ca_before:
        tally.fail(f"{what}: CA changed", "ca_changed")
    rerun = lab.run(operation)  # slow state writes still on
    lab.service.fault()
    state = rerun.state
    ok = bool(state and state.is_completed())
    if not ok and operation == "teardown" and not cluster.dir.exists():
        ok = True  # the killed teardown had archived it already
    if not ok:
        tally.fail(
            f"{what}; rerun: {state.type if state else None} {state and state.message}",
            "not_converged",
        )
    if operation == "provision":
        final = files_problems(cluster.dir, set(RKE_FILES))
        if ok and final:
            tally.fail(f"{what}; after the rerun: {', '.join(final)}", "lost_or_corrupt")
        ca_final = _ca(cluster.dir)
        if reference and ca_final != reference:
            tally.fail(f"{what}: CA changed on the rerun", "ca_changed")
    elif cluster.dir.exists():
        tally.fail(f"{what}: cluster still on the volume after the rerun", "not_converged")
    return what


# -- R2 -----------------------------------------------------------------------------------

ALLOWED = {
    "ran rke",
    "waited, then had nothing to do",
    "waited, then found it torn down",
    "refused as busy",
}


def outcome_of(operation: str, run: FlowRun, rke_ran: bool) -> str:
    """How one run of a race ended, in the words of ALLOWED (or `failed: <message>`)."""
    state, message = run.state, (run.state.message or "") if run.state else ""
    if state and state.is_completed():
        return "ran rke" if rke_ran else "waited, then had nothing to do"
    if rke_ran:
        return f"failed after rke: {message}"
    if " in progress (flow run " in message:
        return "refused as busy"
    if operation == "teardown" and message.startswith("no cluster "):
        return "waited, then found it torn down"
    return f"failed: {state.type.value if state else 'no state'} {message}"


def overlaps(calls: list[dict]) -> int:
    """How many rke calls started before the one before them ended."""
    ended = sorted((c for c in calls if c["event"] == "end"), key=lambda c: c["start"])
    return sum(b["start"] < a["end"] for a, b in itertools.pairwise(ended))


def judge_race(pair: tuple[str, str], runs: list[FlowRun], calls: list[dict], tally: Tally) -> bool:
    """Count one race; True if it passed: no overlap, rke ran, every outcome allowed."""
    tally.trials += 1
    tally.by_operation[" + ".join(pair)] += 1
    label = f"{pair[0]} + {pair[1]}"
    passed = True
    if n := overlaps(calls):
        tally.fail(f"{label}: {n} rke call(s) overlapped", "interleavings")
        passed = False
    ran = [any(c["run"] == str(r.id) for c in calls) for r in runs]
    if not any(ran):
        tally.fail(f"{label}: rke ran for neither run", "no_rke")
        passed = False
    for operation, run, rke_ran in zip(pair, runs, ran, strict=True):
        outcome = outcome_of(operation, run, rke_ran)
        tally.outcomes[f"{operation}: {outcome}"] += 1
        if outcome not in ALLOWED:
            tally.fail(f"{label}: {operation} {outcome}", "bad_outcomes")
            passed = False
    return passed


def start_together(lab: Lab, pair: tuple[str, str]) -> list[UUID]:
    """Both runs requested from the API at the same instant (two clients, one barrier)."""
    barrier, ids = threading.Barrier(len(pair)), [None] * len(pair)

    def request(i: int, operation: str) -> None:
        parameters = lab.parameters(operation)
        barrier.wait()
        ids[i] = lab.service.start(operation, parameters)

    threads = [threading.Thread(target=request, args=(i, op)) for i, op in enumerate(pair)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if None in ids:
        raise RuntimeError("a race's run could not be requested")
    return ids  # type: ignore[return-value]


def r2_race(lab: Lab, rng: random.Random, tally: Tally) -> str:
    """Two operations on one cluster requested at once; each outcome classified."""
    cluster = lab.cluster
    exists = has_state(cluster)
    pair = rng.choice(
        [("provision", "provision"), ("provision", "teardown"), ("teardown", "teardown")]
        if exists
        else [("provision", "provision")]
    )
    if exists and "provision" in pair:
        cluster.write_status("FAILED", "provision", "race", "interrupted")  # rke up will run
    lab.service.fault(pause_at="certs", pause_seconds=0.5)
    ids = start_together(lab, pair)
    runs = [lab.service.wait(i) for i in ids]
    lab.service.fault()
    calls = [c for i in ids for c in lab.service.rke_calls(i)]
    passed = judge_race(pair, runs, calls, tally)
    problems = files_problems(cluster.dir, set()) if cluster.dir.exists() else []
    if problems:
        tally.fail(f"{pair}: {', '.join(problems)}", "lost_or_corrupt")
    outcomes = ", ".join(
        outcome_of(op, r, any(c["run"] == str(r.id) for c in calls))
        for op, r in zip(pair, runs, strict=True)
    )
    return f"{pair[0]} + {pair[1]}: {outcomes}" + ("" if passed else " FAILED")
