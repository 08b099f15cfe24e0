"""Update planning on a 100-node cluster: wall time of plan-cluster's planning, without Prefect.

Writes a 100-node cluster's state on a temporary state volume (cluster.yml, a cluster.rkestate
whose currentState holds the 100 nodes and a real certificate bundle, status, customer record),
then times what plan-cluster does besides the Prefect run and the two live API reads: read the
recorded state (certificates parsed), render the requested spec, plan it against a live view
of 100 Ready nodes, and render the plan as markdown and JSON. The request adds a worker,
removes another, upgrades one minor and changes the etcd snapshot interval.

    .venv/bin/python benchmarks/plan_cluster.py [--nodes 100] [--runs 20]

Goal: <= 1 s for 100 nodes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ETCD = 3


def _certificates(etcd: list[str]) -> dict:
    """An RKE-shaped certificatesBundle: the CA and the service certificates it signs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(key) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-ca")])
    bundle = {}
    names = [
        "kube-ca",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "kube-node",
        "kube-admin",
        "kube-apiserver-proxy-client",
        "kube-service-account-token",
        *(f"kube-etcd-{a.replace('.', '-')}" for a in etcd),
    ]
    for name in names:
        key = ca_key if name == "kube-ca" else ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650 if name == "kube-ca" else 365))
            .sign(ca_key, hashes.SHA256())
        )
        bundle[name] = {
            "name": name,
            "commonName": name,
            "certificatePEM": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "keyPEM": pem_key(key),
        }
    return bundle


def _rke_json(config: dict) -> dict:
    """cluster.yml as RKE's JSON rkeConfig (the fields the plan reads)."""
    backup = config["services"]["etcd"]["backup_config"]
    return {
        "kubernetesVersion": config["kubernetes_version"],
        "nodes": [
            {
                "address": n["address"],
                "port": n["port"],
                "user": n["user"],
                "role": n["role"],
                "internalAddress": n["address"],
                "hostnameOverride": n["address"],
            }
            for n in config["nodes"]
        ],
        "network": {"plugin": config["network"]["plugin"]},
        "services": {
            "etcd": {
                "backupConfig": {
                    "enabled": backup["enabled"],
                    "intervalHours": backup.get("interval_hours"),
                    "retention": backup.get("retention"),
                }
            }
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100, help="cluster size (default 100)")
    parser.add_argument("--runs", type=int, default=20, help="plans to time (default 20)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cluster_mgmt.customer import record_access
    from cluster_mgmt.plan import Live, plan_update, read_applied
    from cluster_mgmt.rke_config import dump_cluster_config, render_cluster_config
    from cluster_mgmt.spec import ClusterSpec, NodeSpec
    from cluster_mgmt.state import StateVolume

    def spec(addresses: list[str], version: str, interval: int) -> ClusterSpec:
        nodes = [
            NodeSpec(address=a, roles=["controlplane", "etcd"] if i < ETCD else ["worker"])
            for i, a in enumerate(addresses)
        ]
        snapshots = {"interval_hours": interval, "retention_hours": 24}
        return ClusterSpec(
            environment="bench",
            name="big",
            nodes=nodes,
            kubernetes_version=version,
            etcd_snapshots=snapshots,
        )

    addresses = [f"10.{i // 250}.{i % 250}.10" for i in range(args.nodes + 1)]
    before = spec(addresses[: args.nodes], "v1.29.9-rancher1-1", 6)
    after = spec(addresses[:5] + addresses[6:], "v1.30.5-rancher1-1", 12)  # -1, +1 worker
    config = render_cluster_config(before, ssh_user="rke")
    root = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    volume = StateVolume(root / "volume")
    volume.initialise()
    cluster = volume.cluster("bench", "big")
    cluster.create()
    cluster.write_text("cluster.yml", dump_cluster_config(config))
    state = {
        "desiredState": {"rkeConfig": _rke_json(config)},
        "currentState": {
            "rkeConfig": _rke_json(config),
            "certificatesBundle": _certificates(addresses[:ETCD]),
        },
    }
    state["desiredState"]["certificatesBundle"] = state["currentState"]["certificatesBundle"]
    cluster.write_text("cluster.rkestate", json.dumps(state))
    cluster.write_status("READY", "provision", "bench", "provisioned", before.spec_hash())
    record_access(cluster, before.customer)
    live = Live(True, version="v1.29.9", ready={a: True for a in addresses[: args.nodes]})
    supported = [
        "v1.27.16-rancher1-1",
        "v1.28.14-rancher1-1",
        "v1.29.9-rancher1-1",
        "v1.30.5-rancher1-1",
    ]

    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        applied = read_applied(cluster)
        plan = plan_update(
            after, render_cluster_config(after, ssh_user="rke"), applied, supported, live
        )
        plan.to_markdown()
        json.dumps(plan.to_dict())
        times.append(time.perf_counter() - start)
    assert plan.allowed and len(plan.add) == 1 and len(plan.remove) == 1, plan.summary()
    print(f"{args.nodes} nodes, {args.runs} plans: {plan.summary()[:100]}...")
    print(
        f"plan: min {min(times) * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms (goal <= 1000 ms)"
    )


if __name__ == "__main__":
    main()
