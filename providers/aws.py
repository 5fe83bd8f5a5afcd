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

A role is assumed only once it is *confirmed* to require the external id:
AssumeRole without it must fail (``check_role_trust``). The check goes to
STS in a fixed region of the role's partition (never the company's
``aws_region``, which a tenant could aim at a region STS does not answer
in, turning a refusal into "could not be checked"). ``core.companies``
stores the outcome with the settings (``aws_role_confirmed``: the role and
external id it was made for) whenever an AWS setting changes; a session for
a role without a matching confirmation makes the check first and fails
closed when it does not pass.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from providers.base import PermanentError, RetryableError, safe_code
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

#: the STS region the role check and AssumeRole use, per partition (the company's region plays no part)
STS_REGIONS = {"aws": "us-east-1", "aws-cn": "cn-north-1", "aws-us-gov": "us-gov-west-1"}
#: where the confirmation of a role is kept (``DeliverySettings.provider_settings``)
CONFIRMED_KEY = "aws_role_confirmed"


@lru_cache(maxsize=1)
def regions() -> frozenset[str]:
    """Every AWS region botocore knows, in every partition (its bundled endpoint data: no network)."""
    data = botocore.session.get_session().get_component("data_loader").load_data("endpoints")
    return frozenset(region for partition in data["partitions"] for region in partition.get("regions", {}))


def valid_region(raw: Any) -> str:
    """``raw`` when it names a real AWS region, else a ValueError (for ``aws_region``)."""
    region = str(raw).strip().lower()
    if region not in regions():
        raise ValueError(f"{region[:40]!r} is not an AWS region (for example us-east-1, eu-west-1)")
    return region


def sts_region(role_arn: str | None) -> str:
    """The fixed STS region of the role's partition (``arn:<partition>:iam::…``)."""
    partition = (role_arn or "").split(":")[1] if (role_arn or "").count(":") >= 2 else "aws"
    return STS_REGIONS.get(partition, STS_REGIONS["aws"])


def role_fingerprint(config: dict) -> str:
    """What a confirmation is for: the role (its account and name), the external id (as a digest) and the
    STS it was checked at. Any change of these needs a new check."""
    external = hashlib.sha256(str(config.get("aws_external_id") or "").encode()).hexdigest()[:16]
    return f"{config.get('aws_role_arn')}|{external}|{_sts_endpoint_url or 'aws'}"


def role_confirmed(config: dict) -> bool:
    """True when the stored confirmation is for this role, external id and STS."""
    return bool(config.get("aws_role_arn")) and config.get(CONFIRMED_KEY) == role_fingerprint(config)


class RoleNotConfirmed(PermanentError):
    """The role is not confirmed to require the external id: it is not assumed."""


#: what SES, SQS and S3 read: one form section
AWS_SETTINGS = SettingsGroup(
    "aws", "Amazon Web Services (SES, SQS)", "Access keys, or a role the service assumes with the external id below.",
    (
        Setting("aws_access_key", "Access key id", "secret"),
        Setting("aws_secret_key", "Secret access key", "secret"),
        Setting("aws_role_arn", "Role ARN", placeholder="arn:aws:iam::123456789012:role/offload"),
        Setting("aws_region", "Region", placeholder="us-east-1", parse=lambda raw: valid_region(raw)),
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
    ensure_role_confirmed(config)
    core = botocore.session.get_session()
    core._credentials = assumed_role_credentials(config, region)
    if region:
        core.set_config_variable("region", region)
    return boto3.session.Session(botocore_session=core)


def ensure_role_confirmed(config: dict) -> None:
    """Fail closed: a role without a matching confirmation is checked now (its first use) and is
    assumed only when AWS refused it without the external id. On success the config dict carries the
    confirmation, so the same backend does not check again."""
    if role_confirmed(config):
        return
    outcome, note = check_role_trust(config["aws_role_arn"])
    if outcome == ROLE_OK:
        config[CONFIRMED_KEY] = role_fingerprint(config)
        return
    if outcome == ROLE_OPEN:
        raise RoleNotConfirmed(f"the role is not assumed: {note}", code="role_not_confirmed")
    raise RetryableError(f"the role is not assumed until it is confirmed: {note}", code="role_not_confirmed")


def _sts_client(role_arn: str | None) -> Any:
    """STS with the service's own identity, at AWS in the role's partition's fixed region
    (or the operator's endpoint)."""
    return boto3.session.Session(region_name=sts_region(role_arn)).client(
        "sts", endpoint_url=_sts_endpoint_url,
        config=Config(connect_timeout=5, read_timeout=15, retries={"total_max_attempts": 2}))


def assumed_role_credentials(config: dict, region: str | None) -> RefreshableCredentials:
    """Credentials of ``aws_role_arn``, assumed with ``aws_external_id``, auto-refreshed."""
    sts = _sts_client(config.get("aws_role_arn"))

    def fetch() -> dict[str, Any]:
        params = {"RoleArn": config["aws_role_arn"], "RoleSessionName": SESSION_NAME, "DurationSeconds": 3600}
        if config.get("aws_external_id"):
            params["ExternalId"] = config["aws_external_id"]
        try:
            creds = sts.assume_role(**params)["Credentials"]
        except ClientError as exc:
            code = safe_code(exc.response.get("Error", {}).get("Code"))
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


def check_role_trust(role_arn: str) -> tuple[str, str]:
    """The confused-deputy check: AssumeRole *without* the external id must fail.

    Returns ``(ROLE_OK, note)`` when AWS refused it (the role requires the
    external id), ``(ROLE_OPEN, note)`` when it succeeded (anyone who knows
    the ARN could make this service act as that role: refuse it), and
    ``(ROLE_UNCHECKED, note)`` when the check could not be made (the role
    is then not assumed: ``ensure_role_confirmed``). The check goes to the
    fixed STS region of the role's partition.
    """
    try:
        _sts_client(role_arn).assume_role(RoleArn=role_arn, RoleSessionName=SESSION_NAME + "-check",
                                        DurationSeconds=900)
    except ClientError as exc:
        code = safe_code(exc.response.get("Error", {}).get("Code"))
        if code in ("AccessDenied", "AccessDeniedException"):
            return ROLE_OK, "the role requires the external id"
        return ROLE_UNCHECKED, f"the role's trust policy could not be checked ({code})"
    except (BotoCoreError, ResponseParserError) as exc:
        return ROLE_UNCHECKED, f"the role's trust policy could not be checked ({type(exc).__name__})"
    return ROLE_OPEN, ("the role can be assumed without the external id: add the condition "
                       "sts:ExternalId to its trust policy")
