"""Every setting ``company configure`` and the settings form edit, declared once.

The service's own settings (the general section: provider, mode, sender...;
the advanced one: recovery, retention, integrations) are declared here; each
provider's settings come from its own declaration (``providers.registry``).
The rest is derived from these groups: the form's sections, the keys
``configure`` accepts and how it validates them, and which values are
secret (write-only, encrypted at rest, redacted from check results).

A setting is stored in its ``DeliverySettings`` column (or ``Company``
column, for ``COMPANY_KEYS``) when there is one; the settings of providers
added later live in ``DeliverySettings.provider_settings``, one encrypted
JSON document, so a new provider needs no migration.
"""
from __future__ import annotations

import re

from providers import registry
from providers.registry import Setting, SettingsGroup, whole_number

from core.audiences import AudienceError, check_lms_url
from core.models import MODES, Company, DeliverySettings
from core.rendering import valid_email

#: settings stored on the company itself
COMPANY_KEYS = ("uncertain_policy", "data_retention_days", "moodle_db_url", "sns_topic_arn",
                "fallback_relay", "fallback_sender_domains")
#: settings only an administrator (or the CLI) may set: they reach shared or operator resources
ADMIN_ONLY_KEYS = ("moodle_db_url", "fallback_relay", "fallback_sender_domains")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _sender(raw: str) -> str:
    if not valid_email(raw):
        raise ValueError("not a valid email address")
    return raw


def _send_rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of emails per second") from None
    if value <= 0:
        raise ValueError("must be above 0")
    return value


def _lms_url(raw: str) -> str:
    """PostgreSQL or MySQL/MariaDB over TCP to a host the guard allows (``core.audiences``)."""
    try:
        check_lms_url(raw, saving=True)
    except AudienceError as exc:
        raise ValueError(str(exc)) from None
    return raw


def _domains(raw: str) -> str | None:
    domains = [d.strip().lower().lstrip("@") for d in str(raw).split(",") if d.strip()]
    bad = [d for d in domains if not _DOMAIN.fullmatch(d)]
    if bad:
        raise ValueError(f"not a domain: {bad[0]}")
    return ",".join(dict.fromkeys(domains)) or None


def _uncertain_policy(raw: str) -> str:
    if raw not in ("resend", "fail"):
        raise ValueError("must be resend or fail")
    return raw


def general() -> SettingsGroup:
    """The general section; its provider choices are the registered senders."""
    return SettingsGroup("general", "Delivery", "How this company's email leaves: which provider, sent by the "
                         "service's workers (direct) or by the company's own cloud worker (offload).", (
                             Setting("provider", "Provider", "select", choices=registry.names(registry.SENDER),
                                     required=True),
                             Setting("mode", "Mode", "select", choices=MODES, required=True,
                                     help="direct: the service sends; offload: batches go to the company's queue"),
                             Setting("enabled", "Delivery enabled", "checkbox", required=True),
                             Setting("sender", "Sender address", "email", placeholder="noreply@example.com",
                                     help="From address; for SES it must be a verified identity", parse=_sender),
                             Setting("max_send_rate", "Max send rate", "number", parse=_send_rate,
                                     help="emails per second; blank: no limit"),
                         ))


ADVANCED = SettingsGroup("advanced", "Advanced", "Recovery policy, data retention and integrations.", (
    Setting("uncertain_policy", "After a crash, uncertain recipients", "select", choices=("resend", "fail"),
            parse=_uncertain_policy, required=True),
    Setting("data_retention_days", "Keep recipient data (days)", "number", parse=whole_number(0),
            help="blank: the service default"),
    Setting("sns_topic_arn", "SNS topic ARN (bounces)"),
    Setting("moodle_db_url", "Moodle database URL", "secret", parse=_lms_url,
            help="admins only; write-only (it holds a password); PostgreSQL or MySQL/MariaDB"),
    Setting("fallback_relay", "Use the service's SMTP relay as fallback", "checkbox", required=True,
            help="admins only: OFFLOAD_FALLBACK_SMTP serves this company when its provider is down"),
    Setting("fallback_sender_domains", "Sender domains approved on the relay", parse=_domains,
            help="admins only: comma-separated; other senders go out From the service's address, with the "
                 "company's sender as Reply-To"),
))


def groups() -> tuple[SettingsGroup, ...]:
    """The form's sections, in order: general, each provider group, advanced."""
    return (general(), *registry.settings_groups(), ADVANCED)


def by_key() -> dict[str, Setting]:
    """Every setting, by key."""
    return {s.key: s for group in groups() for s in group.fields}


def secret_keys() -> tuple[str, ...]:
    """The keys of every secret setting."""
    return tuple(key for key, setting in by_key().items() if setting.secret)


def read(company: Company, key: str):
    """The stored value of setting ``key`` (``None`` when unset)."""
    if key in COMPANY_KEYS:
        return getattr(company, key)
    return company.settings.get_setting(key) if company.settings else None


def write(company: Company, key: str, value) -> None:
    """Store setting ``key``."""
    if key in COMPANY_KEYS:
        setattr(company, key, value)
        return
    if company.settings is None:
        company.settings = DeliverySettings(company=company)
    company.settings.set_setting(key, value)
