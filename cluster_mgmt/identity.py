"""Who a cluster is: the environment and name rules, and every key derived from them.

An environment has no dash, so `<prefix>-<env>-<name>` and `<env>-<name>` stay unambiguous:
`prod`/`eu-web` can never collide with another cluster's keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from cluster_mgmt.patterns import TextRule

ENVIRONMENT = TextRule(r"[a-z0-9]{1,20}", 20, "use 1-20 lowercase letters and digits (no dashes)")
NAME = TextRule(
    r"[a-z0-9](?:[-a-z0-9]{0,38}[a-z0-9])?",
    40,
    "use a DNS-1123 label of at most 40 characters: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit",
)

# A cluster named in one string, as an operator types it to confirm an operation.
CLUSTER_REF = TextRule(
    f"{ENVIRONMENT.body}/{NAME.body}", 61, "type the cluster as <environment>/<name>"
)

Environment = ENVIRONMENT.type("environment")
ClusterName = NAME.type("name")
ClusterRef = CLUSTER_REF.stated()
# An environment to filter by, which the flow checks itself (`StateVolume.clusters`).
EnvironmentFilter = ENVIRONMENT.stated()

STATUS_PREFIX = "cluster-"
"""Starts every status artifact key (and lock name): `cluster-<env>-<name>`."""
ENVIRONMENTS_DIR = PurePosixPath("environments")
"""The state volume's folder of environments, relative to its root."""


def status_key_prefix(environment: str | None = None) -> str:
    """What the status artifact keys of every cluster (or of one environment's) start with."""
    return f"{STATUS_PREFIX}{environment}-" if environment else STATUS_PREFIX


def clusters_dir(environment: str) -> PurePosixPath:
    """An environment's folder of clusters, relative to the volume's root."""
    return ENVIRONMENTS_DIR / ENVIRONMENT.check(environment, "environment") / "clusters"


@dataclass(frozen=True)
class ClusterId:
    """One cluster's identity; constructing it checks both parts."""

    environment: str
    name: str

    def __post_init__(self) -> None:
        ENVIRONMENT.check(self.environment, "environment")
        NAME.check(self.name, "name")

    @property
    def lock_name(self) -> str:
        """The Prefect global concurrency limit serialising operations: `cluster-<env>-<name>`."""
        return f"{status_key_prefix(self.environment)}{self.name}"

    @property
    def artifact_key(self) -> str:
        """The Prefect artifact holding the cluster's status: `cluster-<env>-<name>`."""
        return self.lock_name

    @property
    def plan_artifact_key(self) -> str:
        """The Prefect artifact holding the cluster's last update plan: `plan-<env>-<name>`."""
        return f"plan-{self.environment}-{self.name}"

    @property
    def policy_artifact_key(self) -> str:
        """The Prefect artifact holding the last policy decision: `policy-<env>-<name>`."""
        return f"policy-{self.environment}-{self.name}"

    @property
    def kubeconfig_block(self) -> str:
        """The Prefect `Secret` block with the customer kubeconfig: `kubeconfig-<env>-<name>`."""
        return f"kubeconfig-{self.environment}-{self.name}"

    @property
    def rke_cluster_name(self) -> str:
        """RKE's `cluster_name`: `<env>-<name>`."""
        return f"{self.environment}-{self.name}"

    @property
    def event_resource_id(self) -> str:
        """The resource of the cluster's Prefect events: `cluster-mgmt.cluster.<env>.<name>`."""
        return f"cluster-mgmt.cluster.{self.environment}.{self.name}"

    @property
    def event_resource(self) -> dict[str, str]:
        """The resource of the cluster's Prefect events: its id, name and environment label."""
        return {
            "prefect.resource.id": self.event_resource_id,
            "prefect.resource.name": self.rke_cluster_name,
            "cluster-mgmt.environment": self.environment,
        }

    @property
    def state_dir(self) -> PurePosixPath:
        """The cluster's directory relative to the volume's root:
        `environments/<env>/clusters/<name>`."""
        return clusters_dir(self.environment) / self.name

    def __str__(self) -> str:
        return f"{self.environment}/{self.name}"
