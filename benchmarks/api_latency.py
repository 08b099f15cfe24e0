"""Latency from the API call that starts a run to the run Running, and to Completed.

Embedded default with a process worker (PREFECT_WORKER_QUERY_SECONDS=2, prefetch 10 s), lab
nodes and the lab rke; each run provisions a 3-node cluster through provision-cluster/default.

    .venv/bin/python benchmarks/api_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs to time (default 5)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lab.service import embedded_service

    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    with embedded_service(work, 3, echo=lambda _: None) as (_, lab):
        to_running, to_completed = _measure(lab, args.runs)
    for label, values in (
        ("API call -> Running", to_running),
        ("API call -> Completed", to_completed),
    ):
        print(
            f"{label:24} min {min(values):.2f} s  median {statistics.median(values):.2f} s  "
            f"max {max(values):.2f} s  ({len(values)} runs)"
        )


def _measure(lab, runs: int) -> tuple[list[float], list[float]]:
    from prefect.client.orchestration import get_client

    roles = [["controlplane", "etcd"], ["worker"], ["worker"]]
    nodes = [
        {"address": n.address, "port": n.port, "roles": r}
        for n, r in zip(lab.nodes, roles, strict=True)
    ]
    to_running, to_completed = [], []
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("provision-cluster/default")
        for i in range(runs):
            spec = {"environment": "bench", "name": f"l{i}", "nodes": nodes}
            started = time.perf_counter()
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"spec": spec})
            running = None
            while True:
                state = client.read_flow_run(run.id).state
                if running is None and state.is_running():
                    running = time.perf_counter() - started
                if state.is_final():
                    break
                time.sleep(0.05)
            if not state.is_completed():
                raise SystemExit(f"run {run.id} ended {state.name}: {state.message}")
            total = time.perf_counter() - started
            to_running.append(running if running is not None else total)
            to_completed.append(total)
            print(
                f"run {i + 1}: Running after {to_running[-1]:.2f} s, Completed after {total:.2f} s"
            )
    return to_running, to_completed


if __name__ == "__main__":
    main()
