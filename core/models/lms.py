"""Our records of what the LMS connector took from a Moodle/IOMAD database.

``LmsEmailRow``: one per IOMAD ``email`` row taken over. ``(company_id,
lms_row_id)`` is unique, so a row is taken once whatever crashes or runs
twice; it is inserted in the same transaction as the job and recipient it
became. ``marked_at`` is set once the Moodle row's ``sent`` was written.

``LmsCompletion``: one per (user, course) of the LMS that became (or was
refused as) a certificate; unique, so a completion makes one certificate.
"""
from __future__ import annotations

from sqlalchemy import Index, UniqueConstraint

from core.db import db
from core.models.base import TenantMixin, utcnow

#: LmsEmailRow statuses: queued (a recipient of ours), failed (refused at take-over), sent / failed once marked
ROW_QUEUED, ROW_SENT, ROW_FAILED = "queued", "sent", "failed"


class LmsEmailRow(TenantMixin, db.Model):
    __tablename__ = "lms_email_rows"
    __table_args__ = (
        UniqueConstraint("company_id", "lms_row_id"),
        Index("ix_lms_email_rows_unmarked", "company_id", "marked_at"),
    )
    id = db.Column(db.Integer, primary_key=True)
    lms_row_id = db.Column(db.BigInteger, nullable=False)
    templatename = db.Column(db.String(100))
    job_id = db.Column(db.Integer, db.ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    recipient_id = db.Column(db.Integer, db.ForeignKey("recipients.id", ondelete="SET NULL"))
    status = db.Column(db.String(16), nullable=False, default=ROW_QUEUED)
    error = db.Column(db.String(500))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    #: when the Moodle row's ``sent`` was set (``sent_time`` is the value written, unix seconds)
    marked_at = db.Column(db.DateTime)
    sent_time = db.Column(db.BigInteger)


class LmsCompletion(TenantMixin, db.Model):
    __tablename__ = "lms_completions"
    __table_args__ = (UniqueConstraint("company_id", "lms_user_id", "lms_course_id"),)
    id = db.Column(db.Integer, primary_key=True)
    lms_user_id = db.Column(db.BigInteger, nullable=False)
    lms_course_id = db.Column(db.BigInteger, nullable=False)
    timecompleted = db.Column(db.BigInteger)
    job_id = db.Column(db.Integer, db.ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    #: None when a certificate job was made; else why not (deleted user, no address...)
    skipped = db.Column(db.String(255))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
