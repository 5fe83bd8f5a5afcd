"""Applying a cloud worker's verified callback (CONTRACT §4) to its batch.

The web side (``dashboard.callbacks``) verifies the signature on the raw
body and parses it; ``record_callback`` applies its results exactly once per
``webhook-id``. A result may hand back a recipient the worker did not send
(``"retryable": true``): it goes back to ``pending`` and only such
recipients are re-submitted, so a batch cut short never emails anyone twice.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from sqlalchemy import bindparam, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from core import batches, queue, settings
from core.db import db
from core.models import (B_DONE, B_RETRY, B_SENDING, B_SUBMITTED, BATCH_FINAL, R_FAILED, R_PENDING, R_SENT,
                         RECIPIENT_OPEN, Batch, Job, Recipient, WebhookReceipt, sql_in, utcnow)

#: recipients a callback may still settle
OPEN_RECIPIENT = tuple(sorted(RECIPIENT_OPEN))
#: the statuses a callback result may report (CONTRACT §4): the recipient's outcome, in its own words
RESULT_STATUSES = (R_SENT, R_FAILED)


def record_callback(batch: Batch, webhook_id: str, results: list[dict]) -> dict[str, int] | None:
    """Apply one verified callback's results; ``None`` when ``webhook_id`` was already applied.

    The receipt is written in the same transaction as the results, first, so
    a concurrent duplicate waits on it and then fails the unique constraint.
    Only recipients not yet final change; results for others are ignored.
    """
    company_id, job_id = batch.company_id, batch.job_id
    seen = db.session.execute(WebhookReceipt.scoped(company_id).where(
        WebhookReceipt.webhook_id == webhook_id)).scalar_one_or_none()
    if seen is not None:
        return None
    try:
        db.session.add(WebhookReceipt(company_id=company_id, webhook_id=webhook_id))
        db.session.flush()
        # one callback at a time per batch (a no-op on SQLite, which serialises writers)
        db.session.execute(select(Batch.id).where(Batch.id == batch.id).with_for_update())
        counts = _apply_results(batch, results)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return None
    if counts["resubmit_in"] is not None:  # only the unsent ones go out again (after the commit)
        queue.enqueue_submit([batch.id], delay=counts["resubmit_in"])
    batches.finish_job(job_id)
    return counts


def _apply_results(batch: Batch, results: list[dict]) -> dict[str, int]:
    open_rows = db.session.execute(
        select(Recipient.id, Recipient.email).where(
            Recipient.job_id == batch.job_id,
            Recipient.id.between(batch.first_recipient_id, batch.last_recipient_id),
            Recipient.status.in_(OPEN_RECIPIENT)).order_by(Recipient.id)).all()
    by_email: dict[str, list[int]] = defaultdict(list)
    for rid, email in open_rows:
        by_email[email].append(rid)
    now, route = utcnow(), batch.route or "offload"
    give_up = batch.attempts >= settings.current().max_attempts
    sent, failed, retry, ignored = [], [], [], 0
    for result in results:
        ids = by_email.get(result["email"])
        if not ids or result["status"] not in RESULT_STATUSES:
            ignored += 1
            continue
        rid = ids.pop(0)
        error = (result.get("error") or "failed")[:2000]
        if result["status"] == R_SENT:
            sent.append({"rid": rid, "mid": (result.get("message_id") or None), "now": now, "route": route})
        elif result.get("retryable") is True and not give_up:
            retry.append({"rid": rid, "err": error})  # not sent: the worker hands it back
        else:
            failed.append({"rid": rid, "err": error if not result.get("retryable") else
                           f"gave up after {batch.attempts} attempts: {error}"})
    table = Recipient.__table__
    open_ = or_(*(table.c.status == status for status in OPEN_RECIPIENT))  # no IN: executemany
    n_sent = n_failed = 0
    if sent:
        n_sent = db.session.execute(
            table.update().where(table.c.id == bindparam("rid"), open_).values(
                status=R_SENT, message_id=bindparam("mid"), sent_at=bindparam("now"), route=bindparam("route"),
                error=None, lease_until=None), sent).rowcount
    if failed:
        n_failed = db.session.execute(
            table.update().where(table.c.id == bindparam("rid"), open_).values(
                status=R_FAILED, error=bindparam("err"), lease_until=None), failed).rowcount
    if retry:  # known unsent: pending again (never uncertain), re-submitted alone below
        db.session.execute(table.update().where(table.c.id == bindparam("rid"), open_).values(
            status=R_PENDING, error=bindparam("err"), lease_until=None), retry)
    db.session.execute(update(Job).where(Job.id == batch.job_id).values(
        emails_sent=Job.emails_sent + n_sent, emails_failed=Job.emails_failed + n_failed))
    left = db.session.execute(text(
        "SELECT count(*) FROM recipients WHERE job_id = :j AND id BETWEEN :a AND :b "
        f"AND status IN {sql_in(RECIPIENT_OPEN)}"),
        {"j": batch.job_id, "a": batch.first_recipient_id, "b": batch.last_recipient_id}).scalar()
    values = {"callback_received_at": now, "sent_count": Batch.sent_count + n_sent,
              "failed_count": Batch.failed_count + n_failed}
    db.session.execute(update(Batch).where(Batch.id == batch.id).values(**values))
    if not left:
        # a batch a worker holds (SMTP fallback in progress) is closed by that worker
        db.session.execute(update(Batch).where(
            Batch.id == batch.id, Batch.status.notin_((*BATCH_FINAL, B_SENDING))).values(
            status=B_DONE, completed_at=now, lease_until=None, leased_by=None))
    resubmit_in = None
    if left and retry:
        delay = batches.backoff(batch.attempts)
        moved = db.session.execute(update(Batch).where(Batch.id == batch.id, Batch.status == B_SUBMITTED).values(
            status=B_RETRY, next_attempt_at=now + timedelta(seconds=delay), lease_until=None, leased_by=None,
            error="the cloud worker handed back unsent recipients")).rowcount
        resubmit_in = delay if moved else None
    return {"sent": n_sent, "failed": n_failed, "retry": len(retry), "resubmit_in": resubmit_in,
            "ignored": ignored + len(sent) + len(failed) - n_sent - n_failed}
