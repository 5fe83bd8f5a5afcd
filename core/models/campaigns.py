"""Campaign settings (where a company's learners live in the LMS), the suppression list and
bounce/complaint events."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Model
from core.models.base import TenantMixin, utcnow

#: bounce event kinds: hard bounces and complaints suppress, soft ones only count
HARD, SOFT, COMPLAINT = "hard", "soft", "complaint"
BOUNCE_KINDS = (HARD, SOFT, COMPLAINT)
#: the suppression lists (``Suppression.reason``): an address is on each list at most once
LIST_UNSUBSCRIBE, LIST_BOUNCE, LIST_COMPLAINT, LIST_MANUAL = "unsubscribe", "bounce", "complaint", "manual"
SUPPRESSION_LISTS = (LIST_BOUNCE, LIST_COMPLAINT, LIST_MANUAL, LIST_UNSUBSCRIBE)  # the order a recipient names them
#: the lists that stop transactional mail (passwords, accounts, licences, IOMAD's mail): an unsubscribe
#: from bulk mail never does
TRANSACTIONAL_LISTS = (LIST_BOUNCE, LIST_COMPLAINT, LIST_MANUAL)


class CampaignSettings(TenantMixin, Model):
    """Where a company's users live in the LMS database, and what the LMS
    connector (``core.lms``) does with it. Set by admins and the CLI only."""

    __tablename__ = "campaign_settings"
    __table_args__ = (UniqueConstraint("company_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: IOMAD's ``mdl_company.id`` of this company (``mdl_company_users.companyid``)
    iomad_company_id: Mapped[int | None] = mapped_column(Integer)
    #: Moodle's table prefix (``$CFG->prefix``)
    moodle_prefix: Mapped[str] = mapped_column(String(20), nullable=False, default="mdl_")
    #: take over IOMAD's email queue (``email`` table) for that IOMAD company
    iomad_email_queue: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: new ``course_completions`` become certificate jobs
    lms_completions: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: Moodle's ``$CFG->dataroot`` as mounted on the workers (attachments named in IOMAD's headers)
    lms_dataroot: Mapped[str | None] = mapped_column(String(500))
    #: also send the rows no other company takes (``companyid = 0``, IOMAD companies no company maps)
    iomad_site_queue: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: delete old rows as IOMAD's task did (``modifiedtime`` over 180 days, due), at most hourly
    iomad_purge: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    iomad_purged_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: the completions poller's watermarks: (timecompleted, course_completions.id) of the newest completion
    #: read, re-read with a look-back window; and the highest course_completions.id read (new rows whatever
    #: their timecompleted)
    completions_after_time: Mapped[int | None] = mapped_column(BigInteger)
    completions_after_id: Mapped[int | None] = mapped_column(BigInteger)
    completions_scan_id: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class Suppression(TenantMixin, Model):
    """An address on one of a company's suppression lists (``reason``: ``SUPPRESSION_LISTS``).

    One row per list: an address that unsubscribed and later hard-bounced is on both, and
    removing it from one list leaves the other."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("company_id", "email", "reason"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False, default=LIST_MANUAL)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class BounceEvent(TenantMixin, Model):
    """One bounce or complaint report for one address, applied once (``event_key``)."""

    __tablename__ = "bounce_events"
    __table_args__ = (
        UniqueConstraint("company_id", "event_key"),
        Index("ix_bounce_events_company_created", "company_id", "created_at"),
        Index("ix_bounce_events_created", "created_at"),  # every company's, of a period (an admin's overview)
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_key: Mapped[str] = mapped_column(String(255), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # ses | cloudflare
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # hard | soft | complaint
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    message_id: Mapped[str | None] = mapped_column(String(255))
    job_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    recipient_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("recipients.id", ondelete="SET NULL"))
    detail: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
