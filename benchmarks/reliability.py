"""Reliability figures R1 and R2 (see lab/reliability.py for what each trial checks).

Runs on the embedded default: a real Prefect server on loopback, three lab nodes (real sshd)
and the lab's rke, each flow run in its own process.

    .venv/bin/python benchmarks/reliability.py --r1 50 --r2 100 [--seed 7]

R1: kill -9 at random instants of a provision or teardown (rke, or the flow-run process),
with slow state writes: 0 lost or corrupt state files, the CA never changes, every rerun
converges. A killed flow-run process holds its Prefect lease until it expires (~75 s), so
those trials take that long. R2: two operations on one cluster at once: 0 interleavings.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r1", type=int, default=50, help="kill -9 trials (default 50)")
    parser.add_argument("--r2", type=int, default=100, help="races (default 100)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--first-address", type=int, default=90, help="lab nodes' 127.0.0.x")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from lab.embedded import EmbeddedServer

    work = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    auth = f"bench:{secrets.token_hex(8)}"
    server = EmbeddedServer(
        home=work / "prefect", auth_string=auth, ui=False, cache_dir=REPO / ".lab"
    )
    os.environ |= {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_HOME": str(work / "client"),
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    }
    from pydantic import SecretStr

    from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings
    from cluster_mgmt.spec import ClusterSpec, NodeSpec
    from cluster_mgmt.state import StateVolume
    from lab import rke_binary
    from lab.kube.supervisor import LabSupervisor
    from lab.nodes import LabNodes
    from lab.reliability import Lab, Tally, r1_trial, r2_race, timed_rke

    rng = random.Random(args.seed)
    supervisor = LabSupervisor(work / "supervisor")  # the clusters' Kubernetes APIs (exported)
    with server, supervisor, LabNodes(work / "nodes", 3, first_address=args.first_address) as nodes:
        binary, log = timed_rke(work, rke_binary())
        blocks = {"ssh_access": "bench", "state_volume": "bench", "rke_settings": "bench"}
        NodeSshAccess(
            user=nodes.user,
            private_key=SecretStr(nodes.client_private_key),
            known_hosts=nodes.known_hosts(),
        ).save("bench", overwrite=True)
        RkeSettings(binary=binary).save("bench", overwrite=True)
        results = {}
        for label, count, run in (("R1", args.r1, r1_trial), ("R2", args.r2, r2_race)):
            if not count:
                continue
            root = work / f"state-{label}"
            StateVolume(root).initialise()
            ClusterStateVolume(root=str(root)).save("bench", overwrite=True)
            roles = [["controlplane", "etcd"], ["worker"], ["worker"]]
            spec = ClusterSpec(
                environment="bench",
                name=label.lower(),
                nodes=[
                    NodeSpec(address=n.address, port=n.port, roles=r)
                    for n, r in zip(nodes.nodes, roles, strict=True)
                ],
            )
            lab = Lab(
                blocks, root, spec.model_dump_json(), work / "faults.json", "bench", spec.name
            )
            tally, started = Tally(), time.monotonic()
            for i in range(count):
                what = run(lab, rng, tally) if label == "R1" else run(lab, log, rng, tally)
                print(
                    f"{label} {i + 1}/{count}: {what}; problems so far {len(tally.problems)}",
                    flush=True,
                )
            results[label] = (tally, time.monotonic() - started)
    for label, (tally, seconds) in results.items():
        print(
            f"{label}: {tally.trials} trials in {seconds:.0f} s; lost or corrupt state files "
            f"{tally.lost_or_corrupt}, CA changed {tally.ca_changed}, reruns not converged "
            f"{tally.not_converged}, interleavings {tally.interleavings}"
        )
        for problem in tally.problems:
            print(f"  - {problem}")


if __name__ == "__main__":
    main()
