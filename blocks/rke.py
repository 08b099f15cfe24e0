"""Block for the RKE binary and the Kubernetes versions it supports."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, model_validator

from cluster_mgmt.driver import RkeDriver

RKE_V163_VERSIONS = [
    "v1.27.16-rancher1-1",
    "v1.28.14-rancher1-1",
    "v1.29.9-rancher1-1",
    "v1.30.5-rancher1-1",
]


class RkeSettings(Block):
    """How RKE is run: binary, supported Kubernetes versions, Docker check, hard timeout.

    Example:
        Load the RKE settings:
        ```python
        from blocks import RkeSettings

        driver = RkeSettings.load("BLOCK_NAME").driver()
        ```
    """

    _block_type_name = "RKE Settings"
    _block_type_slug = "rke-settings"

    binary: str = Field(default="rke", description="rke executable: a name on PATH or a path.")
    supported_kubernetes_versions: list[str] = Field(
        default_factory=lambda: list(RKE_V163_VERSIONS),
        description="Kubernetes versions clusters may request (RKE v1.6.3's current ones).",
    )
    default_kubernetes_version: str = Field(
        default="v1.30.5-rancher1-1", description="Version used when a request names none."
    )
    ignore_docker_version: bool = Field(
        default=False, description="Pass --ignore-docker-version: skip RKE's Docker check."
    )
    timeout_seconds: float = Field(
        default=3600, gt=0, description="Hard limit for one rke command; then it is killed."
    )

    @model_validator(mode="after")
    def _default_is_supported(self) -> RkeSettings:
        if self.default_kubernetes_version not in self.supported_kubernetes_versions:
            raise ValueError(
                "default_kubernetes_version must be one of supported_kubernetes_versions"
            )
        return self

    def driver(self) -> RkeDriver:
        """The RKE driver configured by this block."""
        return RkeDriver(
            binary=self.binary,
            timeout_seconds=self.timeout_seconds,
            ignore_docker_version=self.ignore_docker_version,
        )
