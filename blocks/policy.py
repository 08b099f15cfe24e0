"""Block for the Policy Management Service."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from cluster_mgmt.policy import TOTAL_TIMEOUT_SECONDS, PolicyClient


class PolicyService(Block):
    """Where requests are validated: the Policy Management Service, over HTTPS with a token.

    Without a block of the name a flow is given, the built-in rules of the project's policy
    file apply (`CLUSTER_MGMT_POLICY_FILE` names another file).

    Example:
        Validate a request with the policy service:
        ```python
        from blocks import PolicyService

        decision = PolicyService.load("BLOCK_NAME").client().validate(
            "rke-cluster", "prod", "web", spec
        )
        ```
    """

    _block_type_name = "Policy Service"
    _block_type_slug = "policy-service"

    url: str = Field(description="Base URL of the service (https://...); POST {url}/v1/validate.")
    token: SecretStr = Field(description="Bearer token the service expects.")
    verify_tls: bool = Field(default=True, description="Verify the service's TLS certificate.")
    ca_bundle: str | None = Field(
        default=None, description="PEM text or path of the CA that signs the service's certificate."
    )
    timeout_seconds: float = Field(
        default=10,
        gt=0,
        le=TOTAL_TIMEOUT_SECONDS,
        description=(
            "Deadline of one request: connect, TLS, headers and body together. Retries of "
            f"failed requests share one total deadline of {TOTAL_TIMEOUT_SECONDS:g} s, so this "
            f"is at most {TOTAL_TIMEOUT_SECONDS:g}."
        ),
    )

    def client(self) -> PolicyClient:
        """A client for this service."""
        return PolicyClient(
            self.url,
            self.token.get_secret_value(),
            verify_tls=self.verify_tls,
            ca_bundle=self.ca_bundle,
            timeout_seconds=self.timeout_seconds,
        )
