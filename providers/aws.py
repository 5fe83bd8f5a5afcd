"""AWS credentials for a company: its access keys, or its role.

A company gives either an access key pair, or a role ARN that trusts this
service's own AWS identity with the external id the dashboard generated
(the confused-deputy guard). Role credentials come from STS AssumeRole and
refresh themselves before they expire.

The service's own identity (boto3's default chain: environment, instance
role) is used for one thing only, the AssumeRole call, and that call goes
to AWS STS: never to an endpoint a tenant named. The operator may point it
at a test endpoint (``OFFLOAD_STS_ENDPOINT_URL``, through ``configure``). A
company with neither keys nor a role gets ``NoTenantCredentials``, never the
service's identity.
"""
from __future__ import annotations

from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from providers.base import PermanentError

from providers.registry import Setting, SettingsGroup

SESSION_NAME = "manireports-offload"
#: the operator's STS endpoint (tests: moto); ``None``: AWS STS as boto3 resolves it
_sts_endpoint_url: str | None = None
#: boto3's own STS variables (``AWS_ENDPOINT_URL_STS``, ``AWS_ENDPOINT_URL``) are set in this process
_boto_sts_endpoint = False


class NoTenantCredentials(PermanentError):
    """A company set neither an access key pair nor a role ARN."""


def configure(*, sts_endpoint_url: str | None, boto_sts_endpoint: bool = False) -> None:
    """Set the operator's STS endpoint, and whether boto3's own STS variables are set
    (from the app factory / worker start; the settings are read there, not here)."""
    global _sts_endpoint_url, _boto_sts_endpoint
    _sts_endpoint_url = sts_endpoint_url or None
    _boto_sts_endpoint = bool(boto_sts_endpoint)


def sts_endpoint_url() -> str | None:
    return _sts_endpoint_url


def boto_sts_endpoint() -> bool:
    """True when the operator pointed boto3's STS elsewhere (``AWS_ENDPOINT_URL_STS``/``AWS_ENDPOINT_URL``)."""
    return _boto_sts_endpoint

#: what SES, SQS and S3 read: one form section
AWS_SETTINGS = SettingsGroup(
    "aws", "Amazon Web Services (SES, SQS)", "Access keys, or a role the service assumes with the external id below.",
    (
        Setting("aws_access_key", "Access key id", "secret"),
        Setting("aws_secret_key", "Secret access key", "secret"),
        Setting("aws_role_arn", "Role ARN", placeholder="arn:aws:iam::123456789012:role/offload"),
        Setting("aws_region", "Region", placeholder="us-east-1"),
        Setting("aws_endpoint_url", "Endpoint URL", "url", cloud="aws",
                help="only for LocalStack/moto or a private endpoint; blank: AWS"),
        Setting("sqs_queue_url", "SQS queue URL", "url", cloud="aws", help="offload mode: the company's batch queue"),
        Setting("s3_bucket", "S3 bucket", help="certificates"),
        Setting("s3_endpoint_url", "S3 endpoint URL", "url", cloud="aws",
                help="certificates on R2/MinIO or a private endpoint; blank: the endpoint URL above, else AWS"),
        Setting("sns_topic_arn", "SNS topic ARN (bounces)",
                help="SES bounces and complaints: subscribe /callbacks/v1/bounces/sns/<company id> to this topic"),
    ))


def has_credentials(config: dict) -> bool:
    """An access key pair or a role ARN: what every AWS backend needs."""
    return bool((config.get("aws_access_key") and config.get("aws_secret_key")) or config.get("aws_role_arn"))


def aws_session(config: dict, region: str | None = None) -> boto3.session.Session:
    """A boto3 session for ``config``: its keys, else its ``aws_role_arn``; nothing else."""
    region = region or config.get("aws_region") or None
    key, secret = config.get("aws_access_key"), config.get("aws_secret_key")
    if key or secret:
        if not (key and secret):
            raise NoTenantCredentials("AWS credentials incomplete: set both the access key id and the "
                                      "secret access key", code="no_credentials")
        return boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name=region)
    if not config.get("aws_role_arn"):
        raise NoTenantCredentials("no AWS credentials: set an access key pair or a role ARN in the settings",
                                  code="no_credentials")
    core = botocore.session.get_session()
    core._credentials = assumed_role_credentials(config, region)
    if region:
        core.set_config_variable("region", region)
    return boto3.session.Session(botocore_session=core)


def _sts_client(region: str | None) -> Any:
    """STS with the service's own identity, at AWS (or the operator's endpoint)."""
    return boto3.session.Session(region_name=region).client(
        "sts", endpoint_url=_sts_endpoint_url,
        config=Config(connect_timeout=5, read_timeout=15, retries={"total_max_attempts": 2}))


def assumed_role_credentials(config: dict, region: str | None) -> RefreshableCredentials:
    """Credentials of ``aws_role_arn``, assumed with ``aws_external_id``, auto-refreshed."""
    sts = _sts_client(region)

    def fetch() -> dict[str, Any]:
        params = {"RoleArn": config["aws_role_arn"], "RoleSessionName": SESSION_NAME, "DurationSeconds": 3600}
        if config.get("aws_external_id"):
            params["ExternalId"] = config["aws_external_id"]
        try:
            creds = sts.assume_role(**params)["Credentials"]
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code") or "Unknown")
            raise PermanentError(f"{code}: the role could not be assumed (check its trust policy and "
                                 "the external id)", code=code) from None
        except (BotoCoreError, ResponseParserError) as exc:  # the type only: a parser error quotes the body
            raise PermanentError(f"{type(exc).__name__}: the role could not be assumed through AWS STS",
                                 code=type(exc).__name__) from None
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

    return RefreshableCredentials.create_from_metadata(metadata=fetch(), refresh_using=fetch,
                                                       method="sts-assume-role")


#: outcomes of ``check_role_trust``
ROLE_OK, ROLE_OPEN, ROLE_UNCHECKED = "ok", "open", "unchecked"


def check_role_trust(role_arn: str, region: str | None = None) -> tuple[str, str]:
    """The confused-deputy check: AssumeRole *without* the external id must fail.

    Returns ``(ROLE_OK, note)`` when AWS refused it (the role requires the
    external id), ``(ROLE_OPEN, note)`` when it succeeded (anyone who knows
    the ARN could make this service act as that role: refuse it), and
    ``(ROLE_UNCHECKED, note)`` when the check could not be made.
    """
    try:
        _sts_client(region).assume_role(RoleArn=role_arn, RoleSessionName=SESSION_NAME + "-check",
                                        DurationSeconds=900)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code") or "Unknown")
        if code in ("AccessDenied", "AccessDeniedException"):
            return ROLE_OK, "the role requires the external id"
        return ROLE_UNCHECKED, f"the role's trust policy could not be checked ({code})"
    except (BotoCoreError, ResponseParserError) as exc:
        return ROLE_UNCHECKED, f"the role's trust policy could not be checked ({type(exc).__name__})"
    return ROLE_OPEN, ("the role can be assumed without the external id: add the condition "
                       "sts:ExternalId to its trust policy")
