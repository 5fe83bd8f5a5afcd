"""Companies, their delivery settings, users and credentials: the operations
the CLI, the dashboard and the tests share."""
from __future__ import annotations

import base64
import secrets
from datetime import timedelta

from sqlalchemy import func, select

from core.db import db
from core.rendering import valid_email
from core.models import MODES, PROVIDERS, ROLES, SMTP_TLS, ApiToken, Company, DeliverySettings, User, utcnow
from core.models import sha256_hex

#: every key `company configure` and the settings form accept
SETTING_KEYS = ("provider", "mode", "enabled", "sender", "aws_access_key", "aws_secret_key", "aws_region",
                "aws_endpoint_url", "aws_role_arn", "sqs_queue_url", "s3_bucket", "s3_endpoint_url",
                "cloudflare_api_token",
                "cloudflare_account_id", "cloudflare_queue_id", "cloudflare_api_base", "cloudflare_worker_url",
                "offload_url", "offload_auth_token",
                "smtp_host", "smtp_port", "smtp_username", "smtp_password", "smtp_tls", "max_send_rate",
                "uncertain_policy", "data_retention_days", "moodle_db_url", "sns_topic_arn")
COMPANY_KEYS = ("uncertain_policy", "data_retention_days", "moodle_db_url", "sns_topic_arn")


def new_callback_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def create_company(name: str) -> tuple[Company, str, str]:
    """Create a company with default settings; returns it, its API token and callback secret."""
    name = name.strip()
    if not name:
        raise ValueError("a company needs a name")
    secret = new_callback_secret()
    company = Company(name=name, callback_secret=secret)
    company.settings = DeliverySettings(aws_external_id=secrets.token_hex(16))
    db.session.add(company)
    db.session.flush()
    token_row, token = ApiToken.issue(company.id)
    db.session.add(token_row)
    db.session.flush()
    return company, token, secret


def rotate_callback_secret(company: Company, overlap: timedelta = timedelta(hours=24)) -> str:
    """Issue a new callback secret; the old one keeps verifying for ``overlap``."""
    new = new_callback_secret()
    company.callback_secret_previous = company.callback_secret
    company.callback_secret_previous_until = utcnow() + overlap
    company.callback_secret = new
    return new


def _parse_setting(key: str, raw):
    """Turn a raw string (CLI/form) into the stored value; raise ValueError naming the key."""
    if isinstance(raw, str):
        raw = raw.strip()
    if raw in ("", None):
        return None
    if key == "provider" and raw not in PROVIDERS:
        raise ValueError(f"provider: must be one of {', '.join(PROVIDERS)}")
    if key == "mode" and raw not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)}")
    if key == "smtp_tls" and raw not in SMTP_TLS:
        raise ValueError(f"smtp_tls: must be one of {', '.join(SMTP_TLS)}")
    if key == "uncertain_policy" and raw not in ("resend", "fail"):
        raise ValueError("uncertain_policy: must be resend or fail")
    if key == "enabled":
        if str(raw).lower() not in ("0", "1", "true", "false"):
            raise ValueError("enabled: must be 0 or 1")
        return str(raw).lower() in ("1", "true")
    if key in ("smtp_port", "data_retention_days"):
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{key}: expected a whole number") from None
        if value < 0 or (key == "smtp_port" and not 0 < value < 65536):
            raise ValueError(f"{key}: out of range")
        return value
    if key == "max_send_rate":
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("max_send_rate: expected a number of emails per second") from None
        if value <= 0:
            raise ValueError("max_send_rate: must be above 0")
        return value
    if key == "sender":
        if not valid_email(raw):
            raise ValueError("sender: not a valid email address")
    if key.endswith("_url") and key != "moodle_db_url" and not str(raw).startswith(("http://", "https://")):
        raise ValueError(f"{key}: expected an http(s) URL")
    return raw


def configure(company: Company, values: dict) -> list[str]:
    """Apply settings; returns the names of the fields that changed (never values)."""
    unknown = sorted(set(values) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    parsed = {key: _parse_setting(key, raw) for key, raw in values.items()}
    settings = company.settings or DeliverySettings(company=company)
    changed = []
    for key, value in parsed.items():
        target = company if key in COMPANY_KEYS else settings
        if key in ("provider", "mode", "smtp_tls", "uncertain_policy", "enabled") and value is None:
            raise ValueError(f"{key}: a value is required")
        if getattr(target, key) != value:
            setattr(target, key, value)
            changed.append(key)
    return changed


def create_user(email: str, password: str, role: str, company_id: int | None) -> User:
    """Create a login. Managers need a company; admins have none."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = (email or "").strip().lower()
    if not valid_email(email):
        raise ValueError(f"invalid email: {email!r}")
    if len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    if role == "manager" and company_id is None:
        raise ValueError("a manager needs --company")
    if role == "admin":
        company_id = None
    if company_id is not None and db.session.get(Company, company_id) is None:
        raise ValueError(f"no company with id {company_id}")
    if db.session.execute(select(func.count()).select_from(User).where(User.email == email)).scalar():
        raise ValueError(f"a user with email {email} exists")
    user = User(email=email, role=role, company_id=company_id)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    return user


def authenticate_token(token: str) -> ApiToken | None:
    """The live API token row for a bearer token, or ``None``."""

    if not token or len(token) > 200:
        return None
    row = db.session.execute(select(ApiToken).where(ApiToken.token_hash == sha256_hex(token))).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return row
