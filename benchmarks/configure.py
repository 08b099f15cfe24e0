"""Customer configuration: wall time and requests of the CONFIGURING step, as the flows run it.

Brings up one lab cluster (three lab nodes with real sshd, the lab's rke, its Kubernetes API over
TLS under a lab supervisor) and a real Prefect server on loopback, then times the CONFIGURING
step (`flows.configure.configure`) inside a flow run, with the cluster's lock held as the flows
hold it: CONFIGURING status and artifact, the customer access recorded (a fresh cluster), the
configure-customer-access task (namespace, service account, binding, token Secret and its token,
the token checked, the kubeconfig file written 0600 and the Secret block saved, other tokens
revoked), and the reapply-managed-resources task. "fresh" configures a cluster that has never
been configured (a new customer namespace each run, as a provision does); "rerun" configures it
again (configure-cluster). It reports the step's wall time, its Kubernetes requests (through the
`kubernetes` client), its Prefect API HTTP requests, and where the time went: the wait for the
token controller (polling, with its GETs), other Kubernetes requests, the Secret block (load and
save), the volume's files, the status and artifact, and the rest (the two task runs, rendering).

    .venv/bin/python benchmarks/configure.py [--runs 10]

Goal: fresh <= 1 s, rerun <= 0.5 s.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from bench_server import bench_server

PARTS = ("token wait", "kubernetes", "secret block", "volume files", "status + artifact")


class Meter:
    """Wall time and calls per part of the step; only the outermost timed call counts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    @contextmanager
    def part(self, label: str):
        self.calls[label] += 1
        self._depth += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.seconds[label] += time.perf_counter() - started

    def time(self, owner, attr: str, label: str) -> None:
        """Replace `owner.attr` (a function, method or classmethod) by a timed one."""
        raw = inspect.getattr_static(owner, attr)
        meter = self
        if isinstance(raw, classmethod):
            func = raw.__func__

            def timed_cls(cls, *args, **kwargs):
                with meter.part(label):
                    return func(cls, *args, **kwargs)

            setattr(owner, attr, classmethod(timed_cls))
            return

        def timed(*args, **kwargs):
            with meter.part(label):
                return raw(*args, **kwargs)

        setattr(owner, attr, timed)

    def count(self, owner, attr: str, label: str) -> None:
        """Count calls of `owner.attr` without timing them (they overlap the timed parts)."""
        raw = inspect.getattr_static(owner, attr)
        meter = self

        def counted(*args, **kwargs):
            meter.calls[label] += 1
            return raw(*args, **kwargs)

        setattr(owner, attr, counted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="configurations to time (default 10)")
    args = parser.parse_args()
    server, work = bench_server("bench-configure-")
    import yaml

    from lab import rke_binary
    from lab.kube.supervisor import LabSupervisor
    from lab.nodes import LabNodes

    supervisor = LabSupervisor(work / "supervisor")
    with server, supervisor, LabNodes(work / "nodes", 3, first_address=64) as lab:
        roles = [["controlplane", "etcd"], ["worker"], ["worker"]]
        nodes = [
            {"address": n.address, "port": n.port, "user": lab.user, "role": r}
            for n, r in zip(lab.nodes, roles, strict=True)
        ]
        config = {"nodes": nodes, "ssh_key_path": str(lab.client_key_path)}
        (work / "cluster.yml").write_text(yaml.safe_dump(config))
        up = subprocess.run(
            [rke_binary(), "up", "--config", "cluster.yml"],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        )
        if up.returncode:
            sys.exit(f"rke up failed:\n{up.stdout[-2000:]}")
        admin = (work / "kube_config_cluster.yml").read_text()
        rows = _measure(work, admin, args.runs)
    for label in ("fresh", "rerun"):
        _report(label, rows[label])
    empty = statistics.median(r["wall"] for r in rows["empty task"])
    print(f"for scale: an empty task run in the same flow takes {empty:.3f} s (median)")
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _measure(work: Path, admin: str, runs: int) -> dict[str, list[dict]]:
    import httpx
    from kubernetes.client import rest
    from prefect import flow, task
    from prefect.blocks.system import Secret

    from cluster_mgmt import customer as access
    from cluster_mgmt.phases import Operation, Phase
    from cluster_mgmt.spec import CustomerAccess
    from cluster_mgmt.state import KUBECONFIG, ClusterState, StateVolume
    from flows import configure as configure_flow

    meter = Meter()
    meter.time(access, "wait_for_token", "token wait")  # polls (and its GETs) until filled
    meter.time(rest.RESTClientObject, "request", "kubernetes")
    meter.time(Secret, "save", "secret block")
    meter.time(Secret, "load", "secret block")
    meter.time(ClusterState, "write_text", "volume files")
    meter.time(ClusterState, "write_status", "status + artifact")
    meter.time(configure_flow, "update_cluster_artifact", "status + artifact")
    meter.count(httpx.Client, "send", "prefect requests")
    meter.count(httpx.AsyncClient, "send", "prefect requests")

    volume = StateVolume(work / "state")
    volume.initialise()

    def step(cluster: ClusterState, operation: str, customer: CustomerAccess | None) -> dict:
        with cluster.lock(operation, "bench"):
            meter.reset()
            started = time.perf_counter()
            summary = configure_flow.configure(cluster, operation, customer)
            wall = time.perf_counter() - started
            cluster.write_status(Phase.READY, operation, "bench", summary)
        calls = dict(meter.calls)
        return {"wall": wall, "seconds": dict(meter.seconds), "calls": calls, "summary": summary}

    @task(name="bench-empty-task")
    def empty() -> None:
        pass

    @flow(name="bench-configure", log_prints=False)
    def bench() -> dict[str, list[dict]]:
        rows: dict[str, list[dict]] = {"fresh": [], "rerun": [], "empty task": []}
        for run in range(runs + 1):  # the first pair warms up (imports, first block type)
            cluster = volume.cluster("bench", f"c{run}")
            cluster.create()
            cluster.write_text(KUBECONFIG, admin)
            customer = CustomerAccess(namespace=f"bench-{run}", service_account="customer-admin")
            fresh = step(cluster, Operation.PROVISION, customer)
            rerun = step(cluster, Operation.CONFIGURE, None)
            assert "new token" in fresh["summary"] and "token kept" in rerun["summary"]
            started = time.perf_counter()
            empty()
            if run:
                rows["empty task"].append({"wall": time.perf_counter() - started})
                rows["fresh"].append(fresh)
                rows["rerun"].append(rerun)
        return rows

    return bench()


def _report(label: str, rows: list[dict]) -> None:
    walls = [r["wall"] for r in rows]
    kube = sorted({r["calls"].get("kubernetes", 0) for r in rows})
    prefect = sorted({r["calls"].get("prefect requests", 0) for r in rows})
    print(
        f"{label:5}  {len(rows)} runs  wall (s): min {min(walls):.3f}  median "
        f"{statistics.median(walls):.3f}  max {max(walls):.3f}  Kubernetes requests: "
        f"{', '.join(map(str, kube))}  Prefect API HTTP requests: {', '.join(map(str, prefect))}"
    )
    parts = {p: statistics.median(r["seconds"].get(p, 0.0) for r in rows) for p in PARTS}
    other = statistics.median(r["wall"] - sum(r["seconds"].values()) for r in rows)
    print(
        "       median per part (s): "
        + "  ".join(f"{p} {s:.3f}" for p, s in parts.items())
        + f"  other (2 task runs, rendering) {other:.3f}"
    )


if __name__ == "__main__":
    main()
