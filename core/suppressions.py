"""The suppression lists, bounce and complaint reports, and their rates.

A company has four lists (``Suppression.reason``): ``bounce`` and
``complaint`` (from reports and send-time bounces), ``unsubscribe`` (the
one-click link of bulk mail) and ``manual`` (added by hand). An address may
be on several. Bulk and re-engagement mail is stopped by any list;
transactional mail (passwords, accounts, licences, IOMAD's mail) only by
``bounce``, ``complaint`` and ``manual``, never by an unsubscribe
(``lists_for``). A suppressed recipient's error names the list that stopped
it. A hard bounce or a complaint suppresses the address; a soft bounce is
only counted. Reports are applied, once each, with every other result
(``core.delivery.results.record_event``). The bounce and complaint rates are
counted with every other count, in ``core.counts``.
"""
from __future__ import annotations

import hashlib
from email.utils import parseaddr

from sqlalchemy.exc import IntegrityError

from core.db import db
from core.models import R_BOUNCED, R_SENT, SUPPRESSION_LISTS, TRANSACTIONAL_LISTS, Suppression

#: recipients a bounce report may be about: handed to the provider (and maybe already bounced)
DELIVERED = (R_SENT, R_BOUNCED)


# -- the suppression list -----------------------------------------------------
def normalize_email(address: str) -> str:
    return parseaddr(address or "")[1].strip().lower()


def lists_for(bulk: bool) -> tuple[str, ...]:
    """The lists that stop a message: every list for bulk mail, never the unsubscribe list otherwise."""
    return SUPPRESSION_LISTS if bulk else TRANSACTIONAL_LISTS


def suppressed_error(lists) -> str:
    """A suppressed recipient's error: the list that stopped it, in words."""
    first = next(name for name in SUPPRESSION_LISTS if name in lists)
    return f"suppressed ({first} list)"


def suppressed_addresses(company_id: int, bulk: bool) -> dict[str, set[str]]:
    """Address → the lists it is on, of the lists that stop this kind of mail."""
    found: dict[str, set[str]] = {}
    rows = db.session.execute(Suppression.scoped(company_id).with_only_columns(Suppression.email, Suppression.reason)
                              .where(Suppression.reason.in_(lists_for(bulk))))
    for email, reason in rows:
        found.setdefault(email, set()).add(reason)
    return found


def is_suppressed(company_id: int, email: str, reason: str | None = None) -> bool:
    """On any of the company's lists (or on list ``reason``)."""
    stmt = Suppression.scoped(company_id).where(Suppression.email == normalize_email(email))
    if reason is not None:
        stmt = stmt.where(Suppression.reason == reason)
    return db.session.execute(stmt).first() is not None


def suppress(company_id: int, email: str, reason: str) -> bool:
    """Add the address to the company's list ``reason`` and commit; False if it was on it."""
    if reason not in SUPPRESSION_LISTS:
        raise ValueError(f"no suppression list {reason!r}")
    email = normalize_email(email)
    if is_suppressed(company_id, email, reason):
        return False
    db.session.add(Suppression(company_id=company_id, email=email, reason=reason))
    try:
        db.session.commit()
    except IntegrityError:  # added concurrently
        db.session.rollback()
        return False
    return True


# -- applying a report ------------------------------------------------------------
def event_key(source: str, *parts: str) -> str:
    return f"{source}:" + hashlib.sha256("|".join(parts).encode()).hexdigest()
