"""Block for the AWS credentials that take EBS snapshots of the state volume."""

from __future__ import annotations

import functools
import re

import boto3
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from cluster_mgmt.backup import MAX_ATTEMPTS, BackupInputError, client_config

_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")


class AwsCredentials(Block):
    """AWS credentials for EC2 calls, in the style of prefect-aws's `AwsCredentials`.

    Without keys, boto3's default chain applies (environment, instance or pod role).

    Example:
        Load the AWS credentials and make an EC2 client:
        ```python
        from blocks import AwsCredentials

        ec2 = AwsCredentials.load("BLOCK_NAME").ec2_client("eu-west-1")
        ```
    """

    _block_type_name = "Cluster Mgmt AWS Credentials"
    _block_type_slug = "cluster-mgmt-aws-credentials"

    aws_access_key_id: str | None = Field(
        default=None, description="A specific AWS access key ID.", title="AWS Access Key ID"
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        description="The secret key that belongs to the access key ID.",
        title="AWS Access Key Secret",
    )
    aws_session_token: SecretStr | None = Field(
        default=None,
        description="The session token, for temporary credentials only.",
        title="AWS Session Token",
    )
    region_name: str | None = Field(
        default=None,
        description="The AWS region, when the caller names none.",
        title="Region Name",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="An EC2 endpoint other than AWS's own (a VPC endpoint, or a test server).",
        title="Endpoint URL",
    )
    max_attempts: int = Field(
        default=MAX_ATTEMPTS,
        ge=1,
        le=20,
        description="Attempts per EC2 call, with backoff on throttling and transient errors.",
    )

    def check(self, name: str = "default") -> None:
        """BackupInputError naming the field to fix; never calls AWS."""
        where = f"block {self.get_block_type_slug()}/{name}"
        key_id, secret = self.aws_access_key_id, self.aws_secret_access_key
        if bool(key_id) != bool(secret and secret.get_secret_value()):
            raise BackupInputError(
                f"{where} has only one of aws_access_key_id and aws_secret_access_key: set both, "
                "or neither to use the worker's role"
            )
        if key_id and not _KEY_ID.fullmatch(key_id):
            raise BackupInputError(
                f"{where}: aws_access_key_id is not an access key id (16-128 capital letters "
                "and digits, like AKIA...); copy it again from IAM"
            )
        if self.aws_session_token and not key_id:
            raise BackupInputError(f"{where}: aws_session_token needs the access key id and secret")
        if self.endpoint_url and not _URL.fullmatch(self.endpoint_url):
            raise BackupInputError(
                f"{where}: endpoint_url {self.endpoint_url!r} is not an http(s) URL"
            )

    def session(self) -> boto3.Session:
        """A boto3 session with these credentials (or the default chain)."""
        return _session(*self._key())

    def ec2_client(self, region: str | None = None, name: str = "default"):
        """An EC2 client with bounded retries and timeouts (`client_config`), memoised per
        process like prefect-aws's clients: making one loads EC2's API model (~0.5 s).
        BackupInputError if neither the block (`name`) nor the worker has credentials."""
        if self.session().get_credentials() is None:
            raise BackupInputError(
                f"block {self.get_block_type_slug()}/{name} has no keys and the worker has no AWS "
                "credentials (environment, profile or role): set aws_access_key_id and "
                "aws_secret_access_key"
            )
        return _ec2_client(
            self._key(), region or self.region_name, self.endpoint_url, self.max_attempts
        )

    def _key(self) -> tuple[str | None, str | None, str | None, str | None]:
        secret, token = self.aws_secret_access_key, self.aws_session_token
        return (
            self.aws_access_key_id,
            secret.get_secret_value() if secret else None,
            token.get_secret_value() if token else None,
            self.region_name,
        )


def _session(
    key_id: str | None, secret: str | None, token: str | None, region: str | None
) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name=region,
    )


@functools.lru_cache(maxsize=8)
def _ec2_client(key: tuple, region: str | None, endpoint_url: str | None, max_attempts: int):
    return _session(*key).client(
        "ec2", region_name=region, endpoint_url=endpoint_url, config=client_config(max_attempts)
    )
