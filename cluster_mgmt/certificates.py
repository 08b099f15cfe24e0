"""Certificate rotation: the services RKE rotates, the CA confirmation, expiry before and after."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.health import certificate_expiries

RotatableService = Literal[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "etcd",
]
"""The `--service` values `rke cert rotate` acts on (it silently ignores any other)."""
ROTATABLE_SERVICES: tuple[str, ...] = get_args(RotatableService)

CA_ROTATION_CONSEQUENCES = (
    "rotating the CA replaces the cluster's certificate authority and every certificate signed "
    "by it: every kubeconfig issued so far (admin and customer) stops working and is re-issued, "
    "etcd and every Kubernetes component restart, the network, ingress and metrics pods are "
    "restarted, and workloads that trust the cluster CA through their service-account token's "
    "ca.crt must be restarted to get the new one"
)


class RotationInputError(ClusterMgmtError, ValueError):
    """A rotation request that cannot be carried out as asked; nothing was started."""


def check_services(services: list[str], rotate_ca: bool = False) -> list[str]:
    """`services` without duplicates, or RotationInputError naming what to fix: rke silently
    ignores unknown names, and `--rotate-ca` renews every certificate whatever is listed."""
    unknown = [s for s in services if s not in ROTATABLE_SERVICES]
    if unknown:
        raise RotationInputError(
            f"unknown service(s) {', '.join(map(repr, unknown))}: rke cert rotate accepts "
            f"{', '.join(ROTATABLE_SERVICES)} (none: all of them)"
        )
    if rotate_ca and services:
        raise RotationInputError(
            "rotate_ca renews the CA and every certificate: leave services empty with it"
        )
    return list(dict.fromkeys(services))


def ca_confirmation(environment: str, name: str) -> str:
    """What `confirm_rotate_ca` must say to rotate the CA of a cluster: `<env>/<name>`."""
    return f"{environment}/{name}"


def check_ca_confirmation(
    environment: str, name: str, rotate_ca: bool, confirmation: str | None
) -> None:
    """RefusedError unless a CA rotation is confirmed with the cluster's `<env>/<name>`."""
    expected = ca_confirmation(environment, name)
    if rotate_ca and confirmation != expected:
        raise RefusedError(
            f"refusing to rotate the CA of {expected} without confirmation: "
            f"{CA_ROTATION_CONSEQUENCES}. To go ahead, set confirm_rotate_ca to '{expected}' "
            f"(CLI: --rotate-ca --confirm {expected})"
        )


def expiry_rows(
    before: dict[str, datetime | None], after: dict[str, datetime | None]
) -> list[dict[str, str]]:
    """One row per certificate: when it expired before the operation and when it does now."""

    def day(moment: datetime | None) -> str:
        return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "-"

    return [
        {"certificate": n, "expires before": day(before.get(n)), "expires after": day(after.get(n))}
        for n in sorted(before.keys() | after.keys())
    ]


def read_expiries(rkestate: str | None) -> dict[str, datetime | None]:
    """Each certificate's expiry in a cluster.rkestate's text; {} when there is none."""
    if not rkestate:
        return {}
    try:
        return certificate_expiries(rkestate.encode())
    except ValueError:
        return {}
