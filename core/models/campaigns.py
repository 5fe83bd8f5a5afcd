"""Campaign settings (where a company's learners live in the LMS), the suppression list and
bounce/complaint events."""
from __future__ import annotations

from sqlalchemy import Index, UniqueConstraint

from core.db import db
from core.models.base import TenantMixin, utcnow

#: bounce event kinds: hard bounces and complaints suppress, soft ones only count
HARD, SOFT, COMPLAINT = "hard", "soft", "complaint"
BOUNCE_KINDS = (HARD, SOFT, COMPLAINT)


class CampaignSettings(TenantMixin, db.Model):
    """Where a company's users live in the LMS database, and what the LMS
    connector (``core.lms``) does with it. Set by admins and the CLI only."""

    __tablename__ = "campaign_settings"
    __table_args__ = (UniqueConstraint("company_id"),)
    id = db.Column(db.Integer, primary_key=True)
    #: IOMAD's ``mdl_company.id`` of this company (``mdl_company_users.companyid``)
    iomad_company_id = db.Column(db.Integer)
    #: Moodle's table prefix (``$CFG->prefix``)
    moodle_prefix = db.Column(db.String(20), nullable=False, default="mdl_")
    #: take over IOMAD's email queue (``email`` table) for that IOMAD company
    iomad_email_queue = db.Column(db.Boolean, nullable=False, default=False)
    #: new ``course_completions`` become certificate jobs
    lms_completions = db.Column(db.Boolean, nullable=False, default=False)
    #: Moodle's ``$CFG->dataroot`` as mounted on the workers (attachments named in IOMAD's headers)
    lms_dataroot = db.Column(db.String(500))
    #: the completions poller's keyset watermark: (timecompleted, course_completions.id) last taken
    completions_after_time = db.Column(db.BigInteger)
    completions_after_id = db.Column(db.BigInteger)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class Suppression(TenantMixin, db.Model):
    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("company_id", "email"),)
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(320), nullable=False)
    reason = db.Column(db.String(32), nullable=False, default="manual")  # manual|unsubscribe|bounce|complaint
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class BounceEvent(TenantMixin, db.Model):
    """One bounce or complaint report for one address, applied once (``event_key``)."""

    __tablename__ = "bounce_events"
    __table_args__ = (
        UniqueConstraint("company_id", "event_key"),
        Index("ix_bounce_events_company_created", "company_id", "created_at"),
    )
    id = db.Column(db.Integer, primary_key=True)
    event_key = db.Column(db.String(255), nullable=False)
    source = db.Column(db.String(16), nullable=False)  # ses | cloudflare
    kind = db.Column(db.String(16), nullable=False)  # hard | soft | complaint
    email = db.Column(db.String(320), nullable=False)
    message_id = db.Column(db.String(255))
    job_id = db.Column(db.Integer, db.ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    recipient_id = db.Column(db.Integer, db.ForeignKey("recipients.id", ondelete="SET NULL"))
    detail = db.Column(db.String(255))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
