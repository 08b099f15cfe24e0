"""Customer configuration: wall time and HTTP requests of the CONFIGURING step's Kubernetes work.

Brings up one lab cluster (three lab nodes with real sshd, the lab's rke, its Kubernetes API over
TLS under a lab supervisor), then times what CONFIGURING does against the API: namespace,
service account and binding applied, token Secret created and its token awaited, the token
checked, other tokens revoked. "fresh" configures a new customer each run; "rerun" configures an
already configured customer again with its stored kubeconfig. Every request made through the
`kubernetes` client is counted. (Storing the kubeconfig as a Prefect Secret block adds one
Prefect API read on a rerun, and a save on a change; not timed here.)

    .venv/bin/python benchmarks/configure.py [--runs 10]

Goal: fresh <= 1 s, rerun <= 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="configurations to time (default 10)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import yaml

    from lab import rke_binary
    from lab.kube.supervisor import LabSupervisor
    from lab.nodes import LabNodes

    work = Path(tempfile.mkdtemp(prefix="bench-configure-"))
    with LabSupervisor(work / "supervisor"), LabNodes(work / "nodes", 3, first_address=64) as lab:
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
        fresh, rerun = _measure(admin, args.runs)
    for label, rows in (("fresh", fresh), ("rerun", rerun)):
        seconds = [s for s, _ in rows]
        requests = sorted({r for _, r in rows})
        print(
            f"{label:5}  {len(rows)} runs  wall (s): min {min(seconds):.3f}  median "
            f"{statistics.median(seconds):.3f}  max {max(seconds):.3f}  HTTP requests: "
            f"{', '.join(map(str, requests))}"
        )


def _measure(admin: str, runs: int) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    from kubernetes.client import rest

    from cluster_mgmt import customer as access
    from cluster_mgmt.kube import connect
    from cluster_mgmt.spec import CustomerAccess

    count = [0]
    request = rest.RESTClientObject.request

    def counted(self, *args, **kwargs):
        count[0] += 1
        return request(self, *args, **kwargs)

    rest.RESTClientObject.request = counted

    def configure(customer: CustomerAccess, stored: str | None) -> tuple[float, int, str]:
        count[0] = 0
        started = time.perf_counter()
        with connect(admin) as kube:
            access.apply_access(kube, customer)
            creds = access.ensure_credentials(kube, admin, "bench", customer, stored)
            access.revoke_other_tokens(kube, customer, creds)
        return time.perf_counter() - started, count[0], creds.kubeconfig

    fresh, rerun = [], []
    for run in range(runs):
        customer = CustomerAccess(namespace=f"bench-{run}", service_account="customer-admin")
        seconds, requests, kubeconfig = configure(customer, None)
        fresh.append((seconds, requests))
        seconds, requests, again = configure(customer, kubeconfig)
        assert again == kubeconfig, "a rerun must keep the token"
        rerun.append((seconds, requests))
    return fresh, rerun


if __name__ == "__main__":
    main()
