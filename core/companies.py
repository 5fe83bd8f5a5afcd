"""Companies, their delivery settings, users and credentials: the operations
the CLI, the dashboard and the tests share."""
from __future__ import annotations

import base64
import re
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import func, select

from core import delivery_settings, login_throttle
from core.db import db
from core.lms import connection as lms_connection
from core.models import ROLES, ApiToken, Company, DeliverySettings, User, sha256_hex, utcnow
from core.rendering import valid_email
from providers import aws, guard, registry

#: the service's own company-level settings (the rest: ``core.delivery_settings``)
COMPANY_KEYS = delivery_settings.COMPANY_KEYS
#: the settings a role's confirmation depends on: any change checks the role again
AWS_KEYS = frozenset(f.key for f in aws.AWS_SETTINGS.fields) | {"aws_external_id", "aws_sts_endpoint_url"}
ROLE_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


class RoleTrustError(ValueError):
    """The role ARN can be assumed without the external id (the confused-deputy check)."""


def _guard_setting(key: str, check) -> None:
    """Run a guard check for ``key``; a name that does not resolve now is checked again at
    every connection, anything else the guard refuses is a ValueError naming the key."""
    try:
        check()
    except guard.EndpointRefused as exc:
        if exc.rule != "unresolvable":
            raise ValueError(f"{key}: refused by the endpoint guard ({exc.rule}): {exc}") from None


def _check_reach(key: str, value) -> None:
    """The tenant-boundary checks on top of a setting's own validation: endpoints pass the guard
    (in production, an endpoint URL a provider declares for a cloud names one of its hosts)."""
    if value is None:
        return
    clouds = registry.endpoint_clouds()
    if key in clouds:
        _guard_setting(key, lambda: guard.check_url(value, clouds[key]))
    elif isinstance(value, str) and key.endswith("_url") and value.startswith(("http://", "https://")):
        # another backend's URL (its own connection checks the cloud's hosts): the address rules now
        parts = urlsplit(value)
        _guard_setting(key, lambda: guard.resolve(parts.hostname or "", parts.port or 443))
    if key == "smtp_host":
        if any(c in value for c in "/:@ ") and not guard.is_ip_literal(value):
            raise ValueError("smtp_host: expected a host name or address")
        _guard_setting(key, lambda: guard.resolve(value, 25))
    if key == "lms_url":  # parsed by its declaration; its host is checked again at every connection
        target = lms_connection.parse_url(value)
        _guard_setting(key, lambda: guard.resolve(target.host, target.port))
    if key == "aws_role_arn" and not ROLE_ARN.fullmatch(value):
        raise ValueError("aws_role_arn: expected arn:aws:iam::<account>:role/<name>")


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
    company.settings = DeliverySettings()
    # the external id the company's AWS role must require (shown beside the role ARN; no one sets it)
    company.settings.set_setting("aws_external_id", secrets.token_hex(16))
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


def setting_keys() -> tuple[str, ...]:
    """Every key `company configure` and the settings form accept."""
    return tuple(delivery_settings.by_key())


def configure(company: Company, values: dict, *, admin: bool = True, check_role: bool = True) -> list[str]:
    """Apply settings; returns the names of the fields that changed (never values).

    Each value is validated by its declaration (``core.delivery_settings``);
    a ``ValueError`` names the key (``"smtp_port: out of range"``). Endpoints
    pass the endpoint guard. ``admin`` is False for a manager: the admin-only
    keys are then refused. When any AWS setting changes and a role ARN is
    set, the role passes the confused-deputy check (``check_role``) first:
    open, it is refused; confirmed, the confirmation is stored with the
    settings (``aws_role_confirmed``); not checkable, it is saved with a note
    and not assumed until a check at its first use confirms it.
    """
    known = delivery_settings.by_key()
    values = {delivery_settings.ALIASES.get(key, key): raw for key, raw in values.items()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    if not admin:
        for key in delivery_settings.admin_only_keys():
            if key in values:
                raise ValueError(f"{key}: only an administrator can change this setting")
    parsed = {key: known[key].clean(raw) for key, raw in values.items()}
    for key, value in parsed.items():
        _check_reach(key, value)
    current = company.settings
    aws_changed = any(key in AWS_KEYS and (delivery_settings.read(company, key) if current else None) != value
                      for key, value in parsed.items())
    confirmation = None
    if aws_changed or (check_role and "aws_role_arn" in parsed and current is not None
                       and not aws.role_confirmed(current.provider_config())):
        # any AWS setting changed: the role is checked again (from STS's fixed region), and the stored
        # confirmation goes unless the check confirms it now
        config = {**(current.provider_config() if current else {}), **parsed}
        if check_role and config.get("aws_role_arn"):
            outcome, note = aws.check_role_trust(config["aws_role_arn"])
            if outcome == aws.ROLE_OPEN:
                raise RoleTrustError(f"aws_role_arn: {note}")
            # the settings page says plainly when the check could not be made (the role is then not
            # assumed until a check at its first use confirms it)
            company.role_check_note = note if outcome == aws.ROLE_UNCHECKED else None
            confirmation = aws.role_fingerprint(config) if outcome == aws.ROLE_OK else None
    if company.settings is None:
        company.settings = DeliverySettings(company=company)
    changed = []
    for key, value in parsed.items():
        if known[key].required and value is None:
            raise ValueError(f"{key}: a value is required")
        if delivery_settings.read(company, key) != value:
            delivery_settings.write(company, key, value)
            changed.append(key)
    if aws_changed or confirmation:
        company.settings.set_setting(aws.CONFIRMED_KEY, confirmation)
    if set(changed) & set(delivery_settings.LMS_COLUMNS):
        _check_site_queue(company)
    return changed


def _check_site_queue(company: Company) -> None:
    """One company per Moodle database sends IOMAD's site queue."""
    db.session.flush()
    cfg = lms_connection.config_for(company)
    if cfg.site_queue and cfg.email_queue:
        holder = lms_connection.site_queue_holder(cfg)
        if holder is not None:
            raise ValueError(f"iomad_site_queue: company {holder} already sends this Moodle database's site queue")


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


def check_user_fields(role: str, company_id: int | None) -> None:
    """The rules a login's role and company follow (CLI and the Users form alike)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "manager" and company_id is None:
        raise ValueError("a manager needs a company")


def set_password(user: User, password: str) -> None:
    """A new password (which also ends the user's sessions) and no pending back-off."""
    if len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    user.set_password(password)
    unlock_user(user)


def unlock_user(user: User) -> None:
    """Clear the user's login back-off and failure count (an admin's action)."""
    user.failed_logins, user.locked_until = 0, None
    login_throttle.unlock(user.email)


def authenticate_token(token: str) -> ApiToken | None:
    """The live API token row for a bearer token, or ``None``."""

    if not token or len(token) > 200:
        return None
    row = db.session.execute(select(ApiToken).where(ApiToken.token_hash == sha256_hex(token))).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return row
