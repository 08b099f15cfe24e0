"""Reliability figures R1 and R2 (see lab/reliability.py for what each trial checks).

Runs on the embedded default: a real Prefect server on loopback, process workers on a pool of
their own, deployments of provision-cluster and teardown-cluster started through the API, lab
nodes (real sshd) and the lab's rke. Trials run in lanes at once, each lane with its own
cluster, lab node and worker(s), so that a lane waiting out a killed run's lease does not hold
up the others; R1 and R2 run side by side.

    .venv/bin/python benchmarks/reliability.py --r1 50 --r2 100 [--r1-lanes 3] [--r2-lanes 2]

R1: kill -9 at random instants of a provision or teardown (rke, the flow-run process, or the
worker with everything it started), slow state writes: 0 lost or corrupt state files, the CA
never changes, every rerun converges; only kills that landed count. A killed flow-run process
or worker holds the cluster's Prefect lease until it expires (~75 s), so those trials take that
long. R2: two operations on one cluster requested through the API at once, run by the lane's
worker(s) (`--r2-workers`):
0 interleavings, rke ran for one of them, every outcome allowed.
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
import time

from bench_server import bench_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r1", type=int, default=50, help="counted kill -9 trials (default 50)")
    parser.add_argument("--r2", type=int, default=100, help="races (default 100)")
    parser.add_argument("--r1-lanes", type=int, default=3)
    parser.add_argument("--r2-lanes", type=int, default=2)
    parser.add_argument("--r2-workers", type=int, default=1, help="workers per R2 lane")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--first-address", type=int, default=90, help="lab nodes' 127.0.0.x")
    parser.add_argument("--minutes", type=float, default=0, help="stop starting trials after")
    args = parser.parse_args()
    for sig in (signal.SIGINT, signal.SIGHUP):  # lanes start workers from threads: no handlers
        signal.signal(sig, signal.SIG_DFL)
    server, work = bench_server("bench-reliability-")
    from lab.kube.supervisor import LabSupervisor

    lanes = [("R1", i, args.r1) for i in range(args.r1_lanes) if args.r1]
    lanes += [("R2", i, args.r2) for i in range(args.r2_lanes) if args.r2]
    supervisor = LabSupervisor(work / "supervisor", export=False)  # the clusters' APIs
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    results: dict[str, list] = {"R1": [], "R2": []}
    started = time.monotonic()
    with server:
        from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings

        for block in (ClusterStateVolume, NodeSshAccess, RkeSettings):  # once, not per lane
            block.register_type_and_schema()
        run_lanes(args, lanes, work, server, supervisor, deadline, results)
    report(results, time.monotonic() - started)


def run_lanes(args, lanes, work, server, supervisor, deadline, results) -> None:
    """Every lane in a thread of its own, on one lab node each."""
    from lab import rke_binary
    from lab.kube.supervisor import ENV
    from lab.nodes import LabNodes

    first = args.first_address
    with supervisor, LabNodes(work / "nodes", len(lanes), first_address=first) as nodes:
        env = {ENV: supervisor.socket_path}
        threads = []
        for n, (label, index, total) in enumerate(lanes):
            share = sum(1 for lane in lanes if lane[0] == label)
            count = total // share + (index < total % share)
            lane = Lane(label, index, count, nodes, n, work, server, env, args, deadline)
            threads.append(threading.Thread(target=lane.run, args=(rke_binary(), results)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class Lane:
    """One cluster on one lab node, its own pool and worker(s), its share of the trials."""

    def __init__(self, label, index, count, nodes, n, work, server, env, args, deadline):
        self.label, self.index, self.count = label, index, count
        self.node, self.nodes = nodes.nodes[n], nodes
        self.work = work / f"{label}-{index}"
        self.server, self.env, self.deadline = server, env, deadline
        self.rng = random.Random(f"{args.seed}-{label}-{index}")
        self.workers = args.r2_workers if label == "R2" else 1

    def run(self, rke: str, results: dict) -> None:
        from pydantic import SecretStr

        from blocks import ClusterStateVolume, NodeSshAccess
        from cluster_mgmt.spec import ClusterSpec, NodeSpec
        from cluster_mgmt.state import StateVolume
        from lab.reliability import Lab, Tally, calibrate, r1_trial, r2_race, service

        tag = f"{self.label.lower()}-{self.index}"
        blocks = {"ssh_access": tag, "state_volume": tag, "rke_settings": tag}
        root = self.work / "state"
        StateVolume(root).initialise()
        ClusterStateVolume(root=str(root)).save(tag, overwrite=True)
        NodeSshAccess(
            user=self.nodes.user,
            private_key=SecretStr(self.nodes.client_private_key),
            known_hosts=self.nodes.known_hosts(),
        ).save(tag, overwrite=True)
        spec = ClusterSpec(
            environment="bench",
            name=tag,
            nodes=[
                NodeSpec(
                    address=self.node.address,
                    port=self.node.port,
                    roles=["controlplane", "etcd", "worker"],
                )
            ],
        ).model_dump(mode="json")
        with service(
            self.work,
            self.server.api_url,
            self.server.auth_string,
            rke,
            blocks["rke_settings"],
            self.env,
            workers=self.workers,
        ) as svc:
            lab = Lab(svc, blocks, root, spec)
            tally, started = Tally(), time.monotonic()
            if self.label == "R1":
                calibrate(lab)
                print(f"{tag}: calibrated {lab.durations}", flush=True)
            attempts = 0
            while tally.trials < self.count and attempts < 3 * self.count:
                if self.deadline and time.monotonic() > self.deadline:
                    print(f"{tag}: out of time after {tally.trials} trials", flush=True)
                    break
                attempts += 1
                try:
                    what = (
                        r1_trial(lab, self.rng, tally)
                        if self.label == "R1"
                        else r2_race(lab, self.rng, tally)
                    )
                except Exception as exc:  # noqa: BLE001 - a harness error is reported, not hidden
                    tally.problems.append(f"harness error: {exc!r}")
                    what = f"harness error {exc!r}"
                print(
                    f"{tag} {tally.trials}/{self.count}: {what}; problems {len(tally.problems)}",
                    flush=True,
                )
            results[self.label].append((tally, time.monotonic() - started))


def report(results: dict, seconds: float) -> None:
    from collections import Counter

    for label, lanes in results.items():
        if not lanes:
            continue
        total = Counter()
        merged: dict[str, Counter] = {
            k: Counter() for k in ("by_target", "by_phase", "by_operation", "outcomes")
        }
        problems = []
        for tally, _ in lanes:
            for key in (
                "trials",
                "missed",
                "lost_or_corrupt",
                "ca_changed",
                "not_converged",
                "interleavings",
                "no_rke",
                "bad_outcomes",
            ):
                total[key] += getattr(tally, key)
            for key, counter in merged.items():
                counter.update(getattr(tally, key))
            problems += tally.problems
        longest = max(s for _, s in lanes)
        print(f"{label}: {total['trials']} counted in {longest:.0f} s ({len(lanes)} lanes)")
        if label == "R1":
            print(
                f"  kills landed {total['trials']} (missed, not counted: {total['missed']}); "
                f"lost or corrupt state files {total['lost_or_corrupt']}, CA changed "
                f"{total['ca_changed']}, reruns not converged {total['not_converged']}"
            )
            print(f"  by target: {dict(merged['by_target'])}")
            print(f"  by phase: {dict(merged['by_phase'])}")
            print(f"  by operation: {dict(merged['by_operation'])}")
        else:
            print(
                f"  interleavings {total['interleavings']}, races where rke never ran "
                f"{total['no_rke']}, outcomes not allowed {total['bad_outcomes']}, lost or "
                f"corrupt state files {total['lost_or_corrupt']}"
            )
            print(f"  pairs: {dict(merged['by_operation'])}")
            print(f"  outcomes: {dict(merged['outcomes'])}")
        for problem in problems:
            print(f"  - {problem}")
    print(f"wall time {seconds:.0f} s")


if __name__ == "__main__":
    main()
