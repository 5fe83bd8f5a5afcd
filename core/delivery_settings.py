"""Every setting ``company configure`` and the settings form edit, declared once.

The service's own settings (the general section: provider, mode, sender...;
the advanced one: recovery, retention; the LMS connection; the relay) are declared here; each
provider's settings come from its own declaration (``providers.registry``).
The rest is derived from these groups: the form's sections, the keys
``configure`` accepts and how it validates them, and which values are
secret (write-only, encrypted at rest, redacted from check results).

The service's settings are stored in columns (``DeliverySettings``'s
general ones, ``Company``'s for ``COMPANY_KEYS``, the LMS connection's in
``LMS_COLUMNS``); every provider's settings live in
``DeliverySettings.provider_settings``, one encrypted JSON document, so a new
provider needs no migration.
"""
from __future__ import annotations

import os
import re

from core import reputation, unsubscribe
from core.db import db
from core.lms import connection as lms_connection
from core.models import MODES, CampaignSettings, Company, DeliverySettings
from core.rendering import valid_email
from providers import registry
from providers.registry import Setting, SettingsGroup, whole_number

#: settings stored on the company itself
COMPANY_KEYS = ("uncertain_policy", "data_retention_days", "fallback_relay", "fallback_sender_domains")
#: the LMS connection (CONTRACT §7): key → (owner, attribute); the URL is ``companies.moodle_db_url``
#: (encrypted), the rest ``campaign_settings``. Admins and the operator CLI only, never a manager.
LMS_COLUMNS = {"lms_url": ("company", "moodle_db_url"), "lms_prefix": ("lms", "moodle_prefix"),
               "iomad_company_id": ("lms", "iomad_company_id"), "iomad_email_queue": ("lms", "iomad_email_queue"),
               "lms_completions": ("lms", "lms_completions"), "lms_dataroot": ("lms", "lms_dataroot"),
               "iomad_site_queue": ("lms", "iomad_site_queue"), "iomad_purge": ("lms", "iomad_purge")}
#: the LMS switches (checkboxes, stored as booleans)
LMS_FLAGS = ("iomad_email_queue", "lms_completions", "iomad_site_queue", "iomad_purge")
#: old names ``configure`` still accepts
ALIASES = {"moodle_db_url": "lms_url"}
#: form sections only admins see and save: they reach shared or operator resources
ADMIN_ONLY = ("lms", "relay")
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


def _domains(raw: str) -> str | None:
    domains = [d.strip().lower().lstrip("@") for d in str(raw).split(",") if d.strip()]
    bad = [d for d in domains if not _DOMAIN.fullmatch(d)]
    if bad:
        raise ValueError(f"not a domain: {bad[0]}")
    return ",".join(dict.fromkeys(domains)) or None


def _footer(kind: str):
    def parse(raw: str) -> str:
        return unsubscribe.check_footer(raw, kind)
    return parse


def _uncertain_policy(raw: str) -> str:
    if raw not in ("resend", "fail"):
        raise ValueError("must be resend or fail")
    return raw


def _provider(raw: str) -> str:
    """A registered sender's name; an older name (``aws``: SES) is taken as its new one."""
    name = registry.canonical(registry.SENDER, raw)
    if name not in registry.names(registry.SENDER):
        raise ValueError(f"must be one of {', '.join(registry.names(registry.SENDER))}")
    return name


def general() -> SettingsGroup:
    """The general section; its provider choices are the registered senders."""
    senders = registry.names(registry.SENDER)
    return SettingsGroup("general", "Delivery", "How this company's email leaves: which provider, sent by the "
                         "service's workers (direct) or by the company's own cloud worker (offload).", (
                             Setting("provider", "Provider", "select", choices=senders, parse=_provider,
                                     choice_labels=tuple(registry.label(registry.SENDER, n) for n in senders),
                                     required=True),
                             Setting("mode", "Mode", "select", choices=MODES, required=True,
                                     help="direct: the service sends; offload: batches go to the company's queue"),
                             Setting("enabled", "Delivery enabled", "checkbox", required=True),
                             Setting("sender", "Sender address", "email", placeholder="noreply@example.com",
                                     help="From address; for SES it must be a verified identity", parse=_sender),
                             Setting("max_send_rate", "Max send rate", "number", parse=_send_rate,
                                     help="emails per second; blank: no limit"),
                         ))


ADVANCED = SettingsGroup("advanced", "Advanced", "Recovery policy and data retention.", (
    Setting("uncertain_policy", "After a crash, uncertain recipients", "select", choices=("resend", "fail"),
            parse=_uncertain_policy, required=True),
    Setting("data_retention_days", "Keep recipient data (days)", "number", parse=whole_number(0),
            help="blank: the service default"),
))


SUBMISSION = SettingsGroup("submission", "SMTP submission", "Mail the LMS hands to the service's SMTP server "
                           "(user name: the company id, password: an API token) must come from the sender "
                           "address's domain or one of these, on the envelope and in From:.", (
                               Setting("sender_domains", "More sender domains", parse=_domains,
                                       placeholder="lms.example.com, mail.example.com",
                                       help="comma-separated; Moodle's noreplyaddress (and maildomain, "
                                            "with bounce handling on) must be at one of them"),
                           ))


FOOTER = SettingsGroup("footer", "Unsubscribe footer", "Bulk and re-engagement mail ends with a visible "
                       "unsubscribe link (beside the one-click List-Unsubscribe header); restyle it here. Each is "
                       "a small template that must show {{ unsubscribe_url }} and may use nothing else. "
                       "Transactional mail (passwords, accounts, licences, certificates, IOMAD's mail) has none.", (
                           Setting("unsubscribe_footer_text", "Text footer", "textarea", parse=_footer("text"),
                                   help="blank: the default, “" + unsubscribe.DEFAULT_FOOTER_TEXT.replace("\n", " ")
                                        + "”; it follows the text body after a blank line"),
                           Setting("unsubscribe_footer_html", "HTML footer", "textarea", parse=_footer("html"),
                                   help="blank: the default, a small grey line with an Unsubscribe link to "
                                        "{{ unsubscribe_url }}; it goes before the body's end"),
                       ))


def _lms_url(raw: str) -> str:
    try:
        lms_connection.parse_url(raw)
    except lms_connection.LmsError as exc:
        raise ValueError(str(exc).removeprefix("lms_url: ")) from None
    return raw


def _lms_prefix(raw: str) -> str:
    try:
        return lms_connection.check_prefix(raw)
    except lms_connection.LmsError as exc:
        raise ValueError(str(exc).removeprefix("lms_prefix: ")) from None


def _iomad_company_id(raw: str) -> int:
    if not str(raw).isdigit() or int(raw) < 1:
        raise ValueError("expected a whole number above 0 (IOMAD's company id)")
    return int(raw)


def _dataroot(raw: str) -> str:
    if not os.path.isabs(raw) or "\x00" in raw:
        raise ValueError("expected an absolute path (Moodle's dataroot as the workers see it)")
    return os.path.normpath(raw)


LMS = SettingsGroup("lms", "LMS connection (Moodle/IOMAD)", "The company's Moodle/IOMAD database: learners for "
                    "re-engagement, IOMAD's email queue, course completions. Admins only.", (
                        Setting("lms_url", "Database URL", "secret", parse=_lms_url,
                                help="mysql://user:pass@host:3306/moodle or postgresql://...; write-only"),
                        Setting("lms_prefix", "Table prefix", placeholder="mdl_", parse=_lms_prefix),
                        Setting("iomad_company_id", "IOMAD company id", "number", parse=_iomad_company_id),
                        Setting("iomad_email_queue", "Take over IOMAD's email queue", "checkbox",
                                help="turn off IOMAD's own email task first (Site administration › Server › "
                                     "Scheduled tasks)"),
                        Setting("iomad_site_queue", "Also send IOMAD's site queue", "checkbox",
                                help="rows of companyid 0 and of IOMAD companies no company takes; one company "
                                     "per Moodle database"),
                        Setting("iomad_purge", "Purge old IOMAD email rows", "checkbox",
                                help="as IOMAD's task did: rows last changed over 180 days ago, hourly"),
                        Setting("lms_completions", "Course completions become certificates", "checkbox"),
                        Setting("lms_dataroot", "Moodle dataroot (attachments)", placeholder="/var/moodledata",
                                parse=_dataroot, help="as mounted on the workers; blank: rows with attachments fail"),
                    ))


RELAY = SettingsGroup("relay", "Fallback relay (operator)", "Whether the service's own SMTP relay "
                      "(OFFLOAD_FALLBACK_SMTP) may carry this company's mail when its provider is down, and "
                      "which of its sender domains the relay may send as. Admins only.", (
                          Setting("fallback_relay", "Use the service's SMTP relay as fallback", "checkbox",
                                  required=True,
                                  help="OFFLOAD_FALLBACK_SMTP serves this company when its provider is down"),
                          Setting("fallback_sender_domains", "Sender domains approved on the relay", parse=_domains,
                                  help="comma-separated; other senders go out From the service's address, with "
                                       "the company's sender as Reply-To"),
                      ))


def groups() -> tuple[SettingsGroup, ...]:
    """The form's sections, in order: general, each provider group, SMTP submission, the unsubscribe
    footer, the reputation guard, advanced, then the admins' ones."""
    return (general(), *registry.settings_groups(), SUBMISSION, FOOTER, reputation.SETTINGS, ADVANCED, LMS, RELAY)


def admin_only_keys() -> tuple[str, ...]:
    """Keys only an administrator (or the CLI) may set."""
    return tuple(s.key for g in groups() if g.name in ADMIN_ONLY for s in g.fields) + tuple(ALIASES)


def by_key() -> dict[str, Setting]:
    """Every setting, by key."""
    return {s.key: s for group in groups() for s in group.fields}


def secret_keys() -> tuple[str, ...]:
    """The keys of every secret setting."""
    return tuple(key for key, setting in by_key().items() if setting.secret)


def provider_config(company: Company) -> dict:
    """Every setting the providers read, secrets decrypted (``DeliverySettings.provider_config``)."""
    return company.settings.provider_config() if company.settings else registry.defaults()


def _lms_owner(company: Company, key: str, create: bool):
    owner, attr = LMS_COLUMNS[key]
    if owner == "company":
        return company, attr
    row = lms_connection.settings_row(company.id)
    if row is None and create:
        row = CampaignSettings(company_id=company.id)
        db.session.add(row)
    return row, attr


def read(company: Company, key: str):
    """The stored value of setting ``key`` (``None`` when unset)."""
    if key in COMPANY_KEYS:
        return getattr(company, key)
    if key in LMS_COLUMNS:
        row, attr = _lms_owner(company, key, create=False)
        value = getattr(row, attr) if row is not None else None
        return bool(value) if key in LMS_FLAGS else value
    return company.settings.get_setting(key) if company.settings else None


def write(company: Company, key: str, value) -> None:
    """Store setting ``key``."""
    if key in COMPANY_KEYS:
        setattr(company, key, value)
        return
    if key in LMS_COLUMNS:
        row, attr = _lms_owner(company, key, create=True)
        if key == "lms_prefix" and value is None:
            value = "mdl_"
        elif key in LMS_FLAGS:
            value = bool(value)
        setattr(row, attr, value)
        return
    if company.settings is None:
        company.settings = DeliverySettings(company=company)
    company.settings.set_setting(key, value)
