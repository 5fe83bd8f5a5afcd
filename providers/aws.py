"""AWS credentials for a company: its access keys, or its role.

A company gives either an access key pair, or a role ARN that trusts this
service's own AWS identity with the external id the dashboard generated
(the confused-deputy guard). Role credentials come from STS AssumeRole and
refresh themselves before they expire.
"""
from __future__ import annotations

import os
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from providers.registry import Setting, SettingsGroup

SESSION_NAME = "manireports-offload"

#: what SES, SQS and S3 read: one form section
AWS_SETTINGS = SettingsGroup(
    "aws", "Amazon Web Services (SES, SQS)", "Access keys, or a role the service assumes with the external id below.",
    (
        Setting("aws_access_key", "Access key id", "secret"),
        Setting("aws_secret_key", "Secret access key", "secret"),
        Setting("aws_role_arn", "Role ARN", placeholder="arn:aws:iam::123456789012:role/offload"),
        Setting("aws_region", "Region", placeholder="us-east-1"),
        Setting("aws_endpoint_url", "Endpoint URL", "url",
                help="only for LocalStack/moto or a private endpoint; blank: AWS"),
        Setting("sqs_queue_url", "SQS queue URL", "url", help="offload mode: the company's batch queue"),
        Setting("s3_bucket", "S3 bucket", help="certificates"),
        Setting("s3_endpoint_url", "S3 endpoint URL", "url",
                help="certificates on R2/MinIO or a private endpoint; blank: the endpoint URL above, else AWS"),
    ))


def aws_session(config: dict, region: str | None = None) -> boto3.session.Session:
    """A boto3 session for ``config`` (keys, else ``aws_role_arn``, else the default chain)."""
    region = region or config.get("aws_region") or None
    if config.get("aws_access_key") or config.get("aws_secret_key") or not config.get("aws_role_arn"):
        return boto3.session.Session(aws_access_key_id=config.get("aws_access_key") or None,
                                     aws_secret_access_key=config.get("aws_secret_key") or None,
                                     region_name=region)
    core = botocore.session.get_session()
    core._credentials = assumed_role_credentials(config, region)
    if region:
        core.set_config_variable("region", region)
    return boto3.session.Session(botocore_session=core)


def assumed_role_credentials(config: dict, region: str | None) -> RefreshableCredentials:
    """Credentials of ``aws_role_arn``, assumed with ``aws_external_id``, auto-refreshed."""
    endpoint = config.get("aws_sts_endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_STS") \
        or config.get("aws_endpoint_url") or None
    sts = boto3.session.Session(region_name=region).client(
        "sts", endpoint_url=endpoint,
        config=Config(connect_timeout=5, read_timeout=15, retries={"total_max_attempts": 2}))

    def fetch() -> dict[str, Any]:
        params = {"RoleArn": config["aws_role_arn"], "RoleSessionName": SESSION_NAME, "DurationSeconds": 3600}
        if config.get("aws_external_id"):
            params["ExternalId"] = config["aws_external_id"]
        creds = sts.assume_role(**params)["Credentials"]
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

    return RefreshableCredentials.create_from_metadata(metadata=fetch(), refresh_using=fetch,
                                                       method="sts-assume-role")
