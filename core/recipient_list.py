"""One page of a job's recipients: by id, keyset-first (the ids above the last
one shown), optionally those whose address contains some text and of some
statuses. The job page's recipient search and its "next page" read this; the
recipient's data (passwords...) is never read.

A job has at most ``OFFLOAD_MAX_RECIPIENTS`` recipients, so the text match
(case-insensitive, anywhere in the address) reads one job's rows at most, in
id order from the cursor on, and stops at a page.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, func

from core.db import db
from core.models import Recipient

PAGE_SIZE = 50
#: the columns a page shows (never ``data``)
COLUMNS = ("id", "email", "status", "error", "attempts", "sent_at", "route")


@dataclass(frozen=True)
class Page:
    rows: Sequence[Row[Any]]
    #: the id to pass as ``after`` for the next page, or ``None`` on the last one
    next_after: int | None


def like_escaped(text: str) -> str:
    """``text`` for a LIKE pattern with ``\\`` as the escape character."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def page(company_id: int, job_id: int, *, email: str = "", statuses: tuple[str, ...] = (), after: int = 0,
         limit: int = PAGE_SIZE) -> Page:
    """The job's recipients with ids above ``after`` (in id order), ``limit`` of them."""
    stmt = Recipient.scoped(company_id).with_only_columns(*(getattr(Recipient, c) for c in COLUMNS)).where(
        Recipient.job_id == job_id, Recipient.id > after)
    if email:
        stmt = stmt.where(func.lower(Recipient.email).like(f"%{like_escaped(email.lower())}%", escape="\\"))
    if statuses:
        stmt = stmt.where(Recipient.status.in_(statuses))
    rows = db.session.execute(stmt.order_by(Recipient.id).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].id if more else None)
