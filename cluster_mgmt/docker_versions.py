"""Docker versions RKE v1.6.3 accepts on a node, per Kubernetes minor.

Source: rancher/kontainer-driver-metadata `pkg/rke/k8s_docker_info.go` (`loadK8sVersionDockerInfo`)
at commit 7c2ba528f3463bcef49d456717d9924fbc9a0ad8 (branch release-v2.9 / dev-v2.9,
2024-10-04), the KDM input of rke v1.6.3's "go generate" commit b709a78c. RKE compares major and
minor only (rke `docker/docker.go:IsSupportedDockerVersion`: "27.2.x" admits 27.2.0, 27.2.1, ...),
and `hosts/tunnel.go:checkDockerVersion` looks the list up by the cluster's `<major>.<minor>`.
"""

from __future__ import annotations

import re

_OLD = ("1.11.x", "1.12.x", "1.13.x", "17.03.x")
_CE_17 = ("17.06.x", "17.09.x")
_CE_18_20 = ("18.06.x", "18.09.x", "19.03.x", "20.10.x")
_MODERN = ("1.13.x", "17.03.x", *_CE_17, *_CE_18_20)
_D23_24 = ("23.0.x", "24.0.x")
_D25 = ("25.0.x",)
_D26_27 = ("26.0.x", "26.1.x", "27.0.x", "27.1.x", "27.2.x")

# Kubernetes <major>.<minor> -> Docker <major>.<minor>.x allowed by RKE v1.6.3.
_DOCKER_BY_K8S_MINOR: dict[str, tuple[str, ...]] = {
    "1.8": _OLD,
    **{f"1.{m}": _OLD + _CE_18_20 for m in (9, 10, 11)},
    **{f"1.{m}": _OLD + _CE_17 + _CE_18_20 for m in (12, 13)},
    **{f"1.{m}": _MODERN for m in range(14, 23)},
    **{f"1.{m}": _MODERN + _D23_24 for m in (23, 24)},
    **{f"1.{m}": _MODERN + _D23_24 + _D25 for m in (25, 26)},
    **{f"1.{m}": _MODERN + _D23_24 + _D25 + _D26_27 for m in range(27, 31)},
}

_K8S_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?$")
# coreos/go-semver as RKE uses it: exactly <major>.<minor>.<patch>, optional -pre / +build.
_DOCKER_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")
_ALLOWED_ENTRY = re.compile(r"^(\d+)\.(\d+)\.x$")


def _kubernetes_minor(kubernetes_version: str) -> str:
    match = _K8S_VERSION.match(kubernetes_version.strip())
    if not match:
        raise ValueError(
            f"cannot parse Kubernetes version {kubernetes_version!r}; "
            "expected e.g. v1.30.5-rancher1-1"
        )
    return f"{int(match[1])}.{int(match[2])}"


def allowed_docker_versions(kubernetes_version: str) -> tuple[str, ...]:
    """Docker versions (``"27.2.x"`` style) RKE v1.6.3 accepts for this Kubernetes version.

    Raises ValueError for an unparseable version or a minor RKE v1.6.3 has no data for.
    """
    minor = _kubernetes_minor(kubernetes_version)
    try:
        return _DOCKER_BY_K8S_MINOR[minor]
    except KeyError:
        known = ", ".join(_DOCKER_BY_K8S_MINOR)
        raise ValueError(
            f"RKE v1.6.3 has no Docker version data for Kubernetes {minor} "
            f"(from {kubernetes_version!r}); known minors: {known}"
        ) from None


def docker_version_allowed(kubernetes_version: str, docker_version: str) -> bool:
    """Whether RKE v1.6.3 accepts this Docker server version, compared on major.minor.

    An unparseable Docker version is not allowed (RKE fails on it too).
    """
    allowed = allowed_docker_versions(kubernetes_version)
    match = _DOCKER_VERSION.match(docker_version.strip())
    if not match:
        return False
    have = (int(match[1]), int(match[2]))
    for entry in allowed:
        want = _ALLOWED_ENTRY.match(entry)
        if want and (int(want[1]), int(want[2])) == have:
            return True
    return False
