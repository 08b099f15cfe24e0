"""Provisioning overhead: wall time of provision-cluster minus the time spent inside `rke`.

Runs on the embedded default: a real Prefect server on loopback, three lab nodes (real sshd,
real SSH preflight) and the lab's rke, wrapped so that its own wall time is recorded.

    .venv/bin/python benchmarks/provision_overhead.py [--runs 5]

Goal: overhead <= 2 s for a 3-node cluster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench_server import bench_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="provisions to time (default 5)")
    args = parser.parse_args()
    server, work = bench_server("bench-provision-")
    from lab import rke_binary
    from lab.kube.supervisor import LabSupervisor
    from lab.nodes import LabNodes

    timings = work / "rke-seconds"
    wrapper = work / "rke"
    wrapper.write_text(
        f"#!{sys.executable}\nimport subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        f"code = subprocess.call([{rke_binary()!r}, *sys.argv[1:]])\n"
        f"open({str(timings)!r}, 'a').write(f'{{time.perf_counter() - started}}\\n')\n"
        "sys.exit(code)\n"
    )
    wrapper.chmod(0o755)
    supervisor = LabSupervisor(work / "supervisor")  # the cluster's Kubernetes API (exported)
    with server, supervisor, LabNodes(work / "nodes", 3, first_address=60) as lab:
        overheads = _measure(lab, work, wrapper, timings, args.runs)
    print(
        f"provision overhead over {len(overheads)} runs (s): min {min(overheads):.2f}  "
        f"median {statistics.median(overheads):.2f}  max {max(overheads):.2f}"
    )


def _measure(lab, work: Path, wrapper: Path, timings: Path, runs: int) -> list[float]:
    from pydantic import SecretStr

    from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings
    from cluster_mgmt.spec import ClusterSpec, NodeSpec
    from cluster_mgmt.state import StateVolume
    from flows.provision import provision_cluster

    StateVolume(work / "state").initialise()  # as `cluster-mgmt init` does, once per volume
    ClusterStateVolume(root=str(work / "state")).save("default", overwrite=True)
    NodeSshAccess(
        user=lab.user, private_key=SecretStr(lab.client_private_key), known_hosts=lab.known_hosts()
    ).save("default", overwrite=True)
    RkeSettings(binary=str(wrapper)).save("default", overwrite=True)
    roles = [["controlplane", "etcd"], ["worker"], ["worker"]]
    nodes = [
        NodeSpec(address=n.address, port=n.port, roles=r)
        for n, r in zip(lab.nodes, roles, strict=True)
    ]
    provision_cluster(spec=ClusterSpec(environment="bench", name="warmup", nodes=nodes))
    overheads = []
    for i in range(runs):
        timings.unlink(missing_ok=True)
        started = time.perf_counter()
        provision_cluster(spec=ClusterSpec(environment="bench", name=f"c{i}", nodes=nodes))
        total = time.perf_counter() - started
        inside = sum(float(line) for line in timings.read_text().split())
        overheads.append(total - inside)
        print(
            f"run {i + 1}: total {total:.2f} s, inside rke {inside:.2f} s, "
            f"overhead {total - inside:.2f} s"
        )
    return overheads


if __name__ == "__main__":
    main()
