"""One base error: every exception the production packages define is a ClusterMgmtError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from cluster_mgmt.errors import ClusterMgmtError

PACKAGES = ("cluster_mgmt", "tasks", "flows", "blocks", "deployments")
ALLOWED = {
    # Private signals caught inside their own module, never raised to a caller:
    "cluster_mgmt.policy.client._Retryable": "an attempt worth repeating, inside the retry loop",
    "cluster_mgmt.preflight._NodeFailure": "ends one node's check, becomes its NodeReport",
}


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined (not imported) in a production module, by full name."""
    found = {}
    for package in PACKAGES:
        modules = [importlib.import_module(package)]
        path = modules[0].__path__
        for info in pkgutil.walk_packages(path, prefix=f"{package}."):
            modules.append(importlib.import_module(info.name))
        for module in modules:
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_is_a_cluster_mgmt_error():
    found = defined_exceptions()
    outside = sorted(
        name
        for name, cls in found.items()
        if not issubclass(cls, ClusterMgmtError) and name not in ALLOWED
    )
    assert outside == [], "derive these from cluster_mgmt.errors.ClusterMgmtError"
    assert set(ALLOWED) <= set(found), "the allow-list names a class that is gone"
    assert "tasks.preflight.NodesUnreachableError" in found  # the walk reaches every package
    assert "deployments.client.ServiceError" in found
