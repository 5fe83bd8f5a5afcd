"""Our records of what the LMS connector took from a Moodle/IOMAD database.

``LmsEmailRow``: one per IOMAD ``email`` row taken over. ``(company_id,
lms_row_id)`` is unique, so a row is taken once whatever crashes or runs
twice; it is inserted in the same transaction as the job and recipient it
became. ``marked_at`` is set once the row is settled: its Moodle ``sent``
written (sent, or failed for good), or, for a row ``held`` (its recipient
suppressed, or its job cancelled: no delivery attempt), left unmarked in
Moodle on purpose.

``LmsEmailCopy``: the copies IOMAD sends of a row (the template's
``emailto``/``emailcc`` users and addresses, the learner's managers and
supervisors), one recipient each, inserted with the row's own; unique per
row and address, so each copy is sent once.

``LmsCompletion``: one per (user, course) of the LMS that became (or was
refused as) a certificate; unique, so a completion makes one certificate.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Model
from core.models.base import TenantMixin, utcnow

#: LmsEmailRow statuses: queued (a recipient of ours), failed (refused at take-over, or failed for good), sent;
#: held: settled without a delivery attempt (suppressed, cancelled), its Moodle row left unmarked
ROW_QUEUED, ROW_SENT, ROW_FAILED, ROW_HELD = "queued", "sent", "failed", "held"
#: LmsEmailCopy kinds: whom IOMAD's send_to_user sends a copy to
COPY_TO, COPY_CC, COPY_MANAGER, COPY_SUPERVISOR = "to", "cc", "manager", "supervisor"


class LmsEmailRow(TenantMixin, Model):
    __tablename__ = "lms_email_rows"
    __table_args__ = (
        UniqueConstraint("company_id", "lms_row_id"),
        Index("ix_lms_email_rows_unmarked", "company_id", "marked_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lms_row_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    templatename: Mapped[str | None] = mapped_column(String(100))
    job_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    recipient_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("recipients.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=ROW_QUEUED)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    #: when the Moodle row's ``sent`` was set (``sent_time`` is the value written, unix seconds)
    marked_at: Mapped[datetime | None] = mapped_column(DateTime)
    sent_time: Mapped[int | None] = mapped_column(BigInteger)


class LmsEmailCopy(TenantMixin, Model):
    __tablename__ = "lms_email_copies"
    __table_args__ = (UniqueConstraint("row_id", "email"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    row_id: Mapped[int] = mapped_column(Integer, ForeignKey("lms_email_rows.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    recipient_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("recipients.id", ondelete="SET NULL"))
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)


class LmsCompletion(TenantMixin, Model):
    __tablename__ = "lms_completions"
    __table_args__ = (UniqueConstraint("company_id", "lms_user_id", "lms_course_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lms_user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    lms_course_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    timecompleted: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    #: None when a certificate job was made; else why not (deleted user, no address...)
    skipped: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
