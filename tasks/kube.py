"""Tasks: the cluster's Kubernetes API (customer access, managed resources) and the customer
kubeconfig's Prefect Secret block. Credentials never leave a task: each returns a summary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

import httpx
from prefect import get_run_logger, task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE

from cluster_mgmt import customer as access
from cluster_mgmt.kube import Kube, KubeError, connect
from cluster_mgmt.manifests import (
    ApplyError,
    apply_all,
    delete_all,
    managed_names,
    read_record,
    remove_file,
    remove_record,
    resolve,
    stale,
    write_record,
)
from cluster_mgmt.plan import Live, observe
from cluster_mgmt.spec import CustomerAccess
from cluster_mgmt.state import CUSTOMER_KUBECONFIG, KUBECONFIG, ClusterState


@contextmanager
def admin(cluster: ClusterState) -> Iterator[Kube]:
    """A client with the cluster's admin kubeconfig (RKE's); opening it is a named step."""
    with ExitStack() as stack:
        with access.step("admin kubeconfig"):
            kube = stack.enter_context(connect(cluster.read_text(KUBECONFIG) or ""))
        yield kube


def _store(cluster: ClusterState, credentials: access.Credentials) -> bool:
    """Write the customer kubeconfig (0600) and its Secret block where they differ; True if
    anything changed."""
    changed = cluster.read_text(CUSTOMER_KUBECONFIG) != credentials.kubeconfig
    if changed:
        cluster.write_text(CUSTOMER_KUBECONFIG, credentials.kubeconfig)
    name = cluster.id.kubeconfig_block
    try:
        current = Secret.load(name).get()
    except ValueError:  # no such block yet
        current = None
    if current != credentials.kubeconfig:
        Secret(value=credentials.kubeconfig).save(name, overwrite=True)
        changed = True
    return changed


@task(name="configure-customer-access", cache_policy=NO_CACHE)
def configure_customer_access(
    cluster: ClusterState, customer: CustomerAccess, *, rotate: bool = False
) -> str:
    """Apply the customer's namespace, service account and binding; make sure it has a working
    token; store its kubeconfig on the volume and as Secret block `kubeconfig-<env>-<name>`;
    then revoke every other token of the account.

    Returns:
        A secret-free summary.
    """
    logger = get_run_logger()
    admin_kubeconfig = cluster.read_text(KUBECONFIG) or ""
    with admin(cluster) as kube:
        access.apply_access(kube, customer)
        credentials = access.ensure_credentials(
            kube,
            admin_kubeconfig,
            cluster.id.rke_cluster_name,
            customer,
            cluster.read_text(CUSTOMER_KUBECONFIG),
            rotate=rotate,
        )
        try:
            stored = _store(cluster, credentials)
        except (OSError, httpx.HTTPError) as exc:  # the volume or the Prefect API
            # only the error's kind: an API error may echo the request, the kubeconfig
            raise access.ConfigureError(
                f"{access.STEP_FAILED}store kubeconfig' failed: {type(exc).__name__}; "
                "check the state volume and the Prefect API, then run configure-cluster"
            ) from None
        revoked = access.revoke_other_tokens(kube, customer, credentials)
    if revoked:
        logger.info("Revoked the tokens of %s", ", ".join(revoked))
    what = "new token" if credentials.new else "token kept"
    return (
        f"customer {customer.access} as {customer.namespace}/{customer.service_account} "
        f"({what}: Secret {credentials.secret}; kubeconfig {'stored' if stored else 'unchanged'})"
    )


def _apply_recorded(kube: Kube, cluster: ClusterState, name: str) -> int:
    objects = read_record(cluster, name) or []
    with access.step(f"managed resource {name}"):
        try:
            apply_all(kube, objects, f"managed resource {name}")
        except ApplyError as exc:  # reported as this step's failure
            raise KubeError(str(exc)) from None
    return len(objects)


@task(name="reapply-managed-resources", cache_policy=NO_CACHE)
def reapply_managed_resources(cluster: ClusterState) -> list[str]:
    """Server-side apply every recorded managed resource again; their names."""
    names = managed_names(cluster)
    if names:
        with admin(cluster) as kube:
            for name in names:
                _apply_recorded(kube, cluster, name)
    return names


@task(name="check-managed-resource", cache_policy=NO_CACHE)
def check_managed_resource(cluster: ClusterState, objects: list[dict]) -> list[dict]:
    """Discovery: the objects as they will be applied (ManifestError if a kind is not served)."""
    with admin(cluster) as kube:
        return resolve(kube, objects)


@task(name="apply-managed-resource", cache_policy=NO_CACHE)
def apply_managed_resource(cluster: ClusterState, name: str, objects: list[dict]) -> list[str]:
    """Apply the objects, delete those an earlier version held and this one does not, then
    record them (only after everything was applied). ApplyError reports object by object."""
    old = read_record(cluster, name) or []
    with admin(cluster) as kube:
        applied = apply_all(kube, objects, f"managed resource {name}")
        delete_all(kube, stale(old, objects), f"objects dropped from {name}")
    write_record(cluster, name, objects)
    return applied


@task(name="delete-managed-resource", cache_policy=NO_CACHE)
def delete_managed_resource(cluster: ClusterState, name: str, objects: list[dict]) -> list[str]:
    """Delete the objects, then the record."""
    with admin(cluster) as kube:
        deleted = delete_all(kube, objects, f"managed resource {name}")
    remove_record(cluster, name)
    return deleted


@task(name="delete-customer-kubeconfig", cache_policy=NO_CACHE)
def delete_customer_kubeconfig(cluster: ClusterState) -> None:
    """Delete Secret block `kubeconfig-<env>-<name>` and the customer kubeconfig file."""
    with suppress(ValueError):  # no such block
        Secret.delete(cluster.id.kubeconfig_block)
    remove_file(cluster, CUSTOMER_KUBECONFIG)


@task(name="read-live-cluster", cache_policy=NO_CACHE)
def read_live_cluster(cluster: ClusterState) -> Live:
    """The API server's version and the nodes' Ready conditions, read with the admin
    kubeconfig; an unreachable cluster is reported, not raised."""
    return observe(cluster.read_text(KUBECONFIG))
