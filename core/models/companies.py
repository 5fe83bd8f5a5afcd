"""Companies, their delivery settings, logins, API tokens and email templates."""
from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core import settings
from core.crypto import EncryptedJSON, EncryptedText
from core.db import Model
from core.models.base import TenantMixin, sha256_hex, utcnow
from core.passwords import check_password, hash_password
from providers import registry

# New passwords get scrypt (n=2**15, r=8, p=1) in werkzeug's format (``core.passwords``). The settings'
# ``password_hash_method`` names another method; only the test suite sets it (a cheap one: it hashes and checks
# hundreds of passwords), and it is not read from the environment. A stored hash names its own method, so
# checking is unaffected.
_dummy_hashes: dict[str, str] = {}  # per method, made once: what an unknown account's password is checked against


def password_hash_method() -> str:
    return settings.current().password_hash_method


def check_dummy_password(password: str) -> bool:
    """The same hash work as checking a real account's password; always False."""
    method = password_hash_method()
    if method not in _dummy_hashes:
        _dummy_hashes[method] = hash_password(secrets.token_urlsafe(16), method)
    check_password(_dummy_hashes[method], password)
    return False


class Company(Model):
    __tablename__ = "companies"
    if TYPE_CHECKING:  # not a column: set by core.companies.configure for the settings page
        role_check_note: str | None
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    callback_secret: Mapped[str] = mapped_column(EncryptedText, nullable=False)
    callback_secret_previous: Mapped[str | None] = mapped_column(EncryptedText)
    callback_secret_previous_until: Mapped[datetime | None] = mapped_column(DateTime)
    # what to do with recipients whose delivery is uncertain after a crash: resend | fail
    uncertain_policy: Mapped[str] = mapped_column(String(16), nullable=False, default="resend")
    data_retention_days: Mapped[int | None] = mapped_column(Integer)
    moodle_db_url: Mapped[str | None] = mapped_column(EncryptedText)
    # the operator's SMTP relay (OFFLOAD_FALLBACK_SMTP) serves this company only when an admin turns it on;
    # From stays the service's address unless the sender's domain is listed here (comma-separated)
    fallback_relay: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    fallback_sender_domains: Mapped[str | None] = mapped_column(String(1000))
    # the reputation guard (core.reputation): bulk sending paused since, why (in words, with the
    # figures), and the last resume (the guard judges only sends after it)
    reputation_paused_at: Mapped[datetime | None] = mapped_column(DateTime)
    reputation_reason: Mapped[str | None] = mapped_column(String(255))
    reputation_resumed_at: Mapped[datetime | None] = mapped_column(DateTime)

    settings: Mapped[DeliverySettings | None] = relationship(
        "DeliverySettings", uselist=False, back_populates="company", cascade="all, delete-orphan")

    def approved_sender_domains(self) -> set[str]:
        return {d.strip().lower().lstrip("@") for d in (self.fallback_sender_domains or "").split(",") if d.strip()}

    def callback_secrets(self, now: datetime | None = None) -> list[str]:
        """The secrets a callback may be signed with: the current one, and the
        previous one while its overlap lasts."""
        now = now or utcnow()
        found = [self.callback_secret]
        if self.callback_secret_previous and self.callback_secret_previous_until \
                and self.callback_secret_previous_until > now:
            found.append(self.callback_secret_previous)
        return found

    def __str__(self):
        return self.name


# The delivery settings' keys, validation and which are secret are declared by the
# providers (providers.registry) and the service (core.delivery_settings).
MODES = ("direct", "offload")
ROLES = ("admin", "manager")


class DeliverySettings(TenantMixin, Model):
    """A company's delivery settings: the service's own (which sender, which mode, whether
    delivery is on, the From address, the send rate) in columns, and every setting a provider
    declares (``providers.registry``) in ``provider_settings``, one encrypted JSON document,
    so a new provider needs no migration."""

    __tablename__ = "delivery_settings"
    __table_args__ = (UniqueConstraint("company_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16), nullable=False, default=registry.fallback_sender)
    mode: Mapped[str] = mapped_column(String(16), nullable=False, default="direct")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    sender: Mapped[str | None] = mapped_column(String(320))
    max_send_rate: Mapped[float | None] = mapped_column(Float)
    provider_settings: Mapped[Any | None] = mapped_column(EncryptedJSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    company: Mapped[Company] = relationship("Company", back_populates="settings")

    #: the service's own settings, kept in columns
    SERVICE_SETTINGS = ("provider", "mode", "enabled", "sender", "max_send_rate")

    def provider_config(self) -> dict:
        """Plain dict of every setting, secrets decrypted, for ``providers``: a provider
        setting not set has its declared default (``Setting.default``)."""
        return {**registry.defaults(), **(self.provider_settings or {}),
                **{name: getattr(self, name) for name in self.SERVICE_SETTINGS}}

    def get_setting(self, key: str):
        """One setting: its column, else its entry in ``provider_settings``, else its declared default."""
        if key in self.SERVICE_SETTINGS:
            return getattr(self, key)
        return (self.provider_settings or {}).get(key, registry.defaults().get(key))

    def set_setting(self, key: str, value) -> None:
        """Store one setting in its column, else in ``provider_settings`` (blank removes it)."""
        if key in self.SERVICE_SETTINGS:
            setattr(self, key, value)
            return
        stored = dict(self.provider_settings or {})  # a new dict: the column sees the change
        if value is None:
            stored.pop(key, None)
        else:
            stored[key] = value
        self.provider_settings = stored or None


class User(Model):
    """A dashboard login; it is also the user object Flask-Login keeps (``is_authenticated``, ``get_id``, ...)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)  # admin | manager
    company_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("companies.id", ondelete="CASCADE"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    # changes when the password changes, so old sessions stop working
    session_token: Mapped[str] = mapped_column(String(64), nullable=False, default=lambda: secrets.token_hex(16))

    company: Mapped[Company | None] = relationship("Company")

    def set_password(self, password: str) -> None:
        self.password_hash = hash_password(password, password_hash_method())
        self.session_token = secrets.token_hex(16)

    def check_password(self, password: str) -> bool:
        return check_password(self.password_hash, password)

    # -- what a login manager asks of a user (Flask-Login's protocol, as its UserMixin answered it)

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    @property
    def is_active(self) -> bool:
        return bool(self.active)

    @property
    def is_authenticated(self) -> bool:
        return self.is_active

    @property
    def is_anonymous(self) -> bool:
        return False

    def __eq__(self, other):
        return self.get_id() == other.get_id() if isinstance(other, User) else NotImplemented

    __hash__ = object.__hash__

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> int | None:
        """The company this user may see, ``None`` for admins (all).

        Fails closed: a non-admin without a company sees company 0, which does
        not exist (such a user cannot sign in either: ``dashboard.auth``)."""
        if self.is_admin:
            return None
        return self.company_id if self.company_id is not None else 0


class ApiToken(TenantMixin, Model):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, default="LMS")
    prefix: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)

    @classmethod
    def issue(cls, company_id: int, name: str = "LMS") -> tuple[ApiToken, str]:
        """A new token row and the plaintext token (shown once, stored hashed)."""
        plain = "mro_" + secrets.token_urlsafe(32)
        return cls(company_id=company_id, name=name, prefix=plain[:12], token_hash=sha256_hex(plain)), plain


class Template(TenantMixin, Model):
    __tablename__ = "templates"
    if TYPE_CHECKING:  # not a column: set by core.templates.save, what the save answers
        warnings: list[str]
    __table_args__ = (UniqueConstraint("company_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    job_type: Mapped[str | None] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text, nullable=False)
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    company: Mapped[Company] = relationship("Company", viewonly=True)  # pickers name the company, not its id
