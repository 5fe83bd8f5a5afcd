"""Companies, their delivery settings, users and credentials: the operations
the CLI, the dashboard and the tests share."""
from __future__ import annotations

import base64
import secrets
from datetime import timedelta

from sqlalchemy import func, select

from core import delivery_settings
from core.db import db
from core.rendering import valid_email
from core.models import ROLES, ApiToken, Company, DeliverySettings, User, utcnow
from core.models import sha256_hex

#: the service's own company-level settings (the rest: ``core.delivery_settings``)
COMPANY_KEYS = delivery_settings.COMPANY_KEYS


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


def setting_keys() -> tuple[str, ...]:
    """Every key `company configure` and the settings form accept."""
    return tuple(delivery_settings.by_key())


def configure(company: Company, values: dict) -> list[str]:
    """Apply settings; returns the names of the fields that changed (never values).

    Each value is validated by its declaration (``core.delivery_settings``);
    a ``ValueError`` names the key (``"smtp_port: out of range"``).
    """
    known = delivery_settings.by_key()
    values = {delivery_settings.ALIASES.get(key, key): raw for key, raw in values.items()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    parsed = {key: known[key].clean(raw) for key, raw in values.items()}
    if company.settings is None:
        company.settings = DeliverySettings(company=company)
    changed = []
    for key, value in parsed.items():
        if known[key].required and value is None:
            raise ValueError(f"{key}: a value is required")
        if delivery_settings.read(company, key) != value:
            delivery_settings.write(company, key, value)
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
