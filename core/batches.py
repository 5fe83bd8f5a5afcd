"""What the send jobs need from the database, in a few functions: claim a
batch, recover its in-flight recipients, mark a chunk as sending, record
results, finish the job. The database is the truth: every decision that
matters (who holds a batch, what was handed to a provider) is made here.
"""
from __future__ import annotations

import random

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text, update

from core.bulk import execute_for_ids, is_postgres
from core.db import db
from core.suppressions import suppress
from core.models import (B_CANCELLED, B_QUEUED, B_SENDING, B_SUBMITTED, BATCH_FINAL, BATCH_WAITING,
                         CANCELLED, COMPLETED, FAILED, JOB_FINAL, PARTIAL, PAUSED, PROCESSING, QUEUED, R_BOUNCED,
                         R_CANCELLED, R_FAILED, R_PENDING, R_SENDING, R_SENT, R_SUPPRESSED, R_UNCERTAIN,
                         RECIPIENT_CLAIMABLE, RECIPIENT_OPEN, LIST_BOUNCE, Batch, Job, Recipient, sql_in, utcnow)
from providers import ResultStatus


@dataclass
class Claim:
    """A batch this worker holds until ``lease_until``."""

    batch_id: int
    job_id: int
    company_id: int
    first_id: int
    last_id: int
    attempts: int
    worker: str


def claim_batch(batch_id: int, worker: str, lease_s: int) -> Claim | None:
    """Take the batch if it is waiting, or its holder's lease has run out."""
    now = utcnow()
    res = db.session.execute(text(
        "UPDATE batches SET status = :sending, lease_until = :lease, leased_by = :worker, "
        "attempts = attempts + 1, next_attempt_at = NULL "
        f"WHERE id = :id AND ((status IN {sql_in(BATCH_WAITING)} "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= :soon)) "
        "OR (status = :sending AND lease_until < :now))"),
        {"sending": B_SENDING, "lease": now + timedelta(seconds=lease_s), "worker": worker, "id": batch_id,
         "now": now, "soon": now + timedelta(seconds=2)})
    db.session.commit()
    if res.rowcount != 1:
        return None
    b = db.session.execute(select(Batch.job_id, Batch.company_id, Batch.first_recipient_id,
                                  Batch.last_recipient_id, Batch.attempts).where(Batch.id == batch_id)).one()
    return Claim(batch_id, b.job_id, b.company_id, b.first_recipient_id, b.last_recipient_id, b.attempts, worker)


def renew_lease(claim: Claim, lease_s: int) -> bool:
    """Extend the lease; False when another worker has taken the batch."""
    res = db.session.execute(
        update(Batch).where(Batch.id == claim.batch_id, Batch.leased_by == claim.worker,
                            Batch.status == B_SENDING)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s)))
    db.session.commit()
    return res.rowcount == 1


def release_batch(claim: Claim, status: str, *, next_attempt_at: datetime | None = None,
                  error: str | None = None, route: str | None = None, refund_attempt: bool = False) -> bool:
    """Give the batch up in ``status`` (done, retry, failed, cancelled, queued);
    ``refund_attempt``: the run was no attempt (it only waited for tokens)."""
    values = {"status": status, "lease_until": None, "next_attempt_at": next_attempt_at}
    if refund_attempt:
        values["attempts"] = Batch.attempts - 1
    if error is not None:
        values["error"] = error[:2000]
    if route is not None:
        values["route"] = route
    if status in BATCH_FINAL:
        values["completed_at"] = utcnow()
    res = db.session.execute(update(Batch).where(Batch.id == claim.batch_id, Batch.leased_by == claim.worker)
                             .values(**values))
    db.session.commit()
    return res.rowcount == 1


def job_state(job_id: int) -> tuple[str, datetime | None]:
    """(status, cancel_requested_at) of a job, read fresh."""
    row = db.session.execute(select(Job.status, Job.cancel_requested_at).where(Job.id == job_id)).one()
    return row.status, row.cancel_requested_at


def mark_started(job_id: int) -> None:
    db.session.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED)
                       .values(status=PROCESSING, started_at=utcnow()))
    db.session.commit()


def recover_in_flight(claim: Claim, policy: str) -> int:
    """Recipients left ``sending`` by a holder that died: we cannot know if the
    provider got them. They become ``uncertain`` and are counted on the job;
    policy ``fail`` fails them for review, ``resend`` lets this run send them."""
    ids = list(db.session.execute(text(
        f"SELECT id FROM recipients WHERE job_id = :j AND id BETWEEN :a AND :b AND status = '{R_SENDING}'"),
        {"j": claim.job_id, "a": claim.first_id, "b": claim.last_id}).scalars())
    if not ids:
        return 0
    if policy == "fail":
        execute_for_ids(f"UPDATE recipients SET status = '{R_FAILED}', error = 'uncertain_delivery', "
                        "lease_until = NULL WHERE {ids}", ids)
        db.session.execute(update(Job).where(Job.id == claim.job_id).values(
            emails_uncertain=Job.emails_uncertain + len(ids), emails_failed=Job.emails_failed + len(ids)))
    else:
        execute_for_ids(f"UPDATE recipients SET status = '{R_UNCERTAIN}', lease_until = NULL WHERE {{ids}}", ids)
        db.session.execute(update(Job).where(Job.id == claim.job_id).values(
            emails_uncertain=Job.emails_uncertain + len(ids)))
    db.session.commit()
    return len(ids)


def load_sendable(claim: Claim) -> list:
    """(id, email, data, attempts) of the batch's recipients still to send, by id."""
    return db.session.execute(
        select(Recipient.id, Recipient.email, Recipient.data, Recipient.attempts)
        .where(Recipient.job_id == claim.job_id, Recipient.id.between(claim.first_id, claim.last_id),
               Recipient.status.in_(RECIPIENT_CLAIMABLE))
        .order_by(Recipient.id)).all()


def mark_sending(claim: Claim, ids: list[int], lease_s: int) -> bool:
    """Claim recipients just before the provider call (attempt + 1), unless the
    job was cancelled; False means stop: cancelled, or the batch was lost.
    The batch's lease is renewed in the same transaction, so it covers the call."""
    params = {"j": claim.job_id, "lease": utcnow() + timedelta(seconds=lease_s), "b": claim.batch_id,
              "w": claim.worker}
    res = execute_for_ids(
        f"UPDATE recipients SET status = '{R_SENDING}', attempts = attempts + 1, lease_until = :lease "
        f"WHERE {{ids}} AND status IN {sql_in(RECIPIENT_CLAIMABLE)} "
        "AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = :j AND jobs.cancel_requested_at IS NULL) "
        "AND EXISTS (SELECT 1 FROM batches WHERE batches.id = :b AND batches.leased_by = :w "
        f"AND batches.status = '{B_SENDING}')", ids, params)
    if res.rowcount == len(ids):  # recipients first, then the batch: record_results' lock order
        res = db.session.execute(
            update(Batch).where(Batch.id == claim.batch_id, Batch.leased_by == claim.worker,
                                Batch.status == B_SENDING).values(lease_until=params["lease"]))
        if res.rowcount == 1:
            db.session.commit()
            return True
    db.session.rollback()
    return False


def unmark_sending(ids: list[int], *, refund_attempt: bool, error: str | None = None) -> None:
    """Put a chunk back to pending when the provider call certainly did not happen."""
    sets = f"status = '{R_PENDING}', lease_until = NULL"
    if refund_attempt:
        sets += ", attempts = attempts - 1"
    params = {}
    if error is not None:
        sets += ", error = :err"
        params["err"] = error[:2000]
    execute_for_ids(f"UPDATE recipients SET {sets} WHERE {{ids}} AND status = '{R_SENDING}'", ids, params)
    db.session.commit()


def record_results(claim: Claim, results, route: str, max_attempts: int, attempts: dict[int, int]) -> dict:
    """Store one chunk's results in bulk and bump the job's counters.

    ``results`` are ``providers.Result``; ``retry`` ones go back to pending,
    or fail with their last reason once ``max_attempts`` is reached.
    """
    now = utcnow()
    sent = [{"rid": r.key, "mid": r.message_id} for r in results if r.status == ResultStatus.SENT]
    failed, retry, bounced = [], [], []
    for r in results:
        if r.status == ResultStatus.BOUNCED:
            bounced.append({"rid": r.key, "err": f"bounce: {r.error or 'hard'}"[:2000]})
        elif r.status == ResultStatus.FAILED:
            failed.append({"rid": r.key, "err": (r.error or "failed")[:2000]})
        elif r.status == ResultStatus.RETRY:
            if attempts.get(r.key, 0) >= max_attempts:
                failed.append({"rid": r.key, "err": f"gave up after {max_attempts} attempts: {r.error}"[:2000]})
            else:
                retry.append({"rid": r.key, "err": (r.error or "retry")[:2000]})
    _set_outcomes(sent, R_SENT, now, route)
    _set_outcomes(failed, R_FAILED, now, route)
    _set_outcomes(retry, R_PENDING, now, route)
    _set_outcomes(bounced, R_BOUNCED, now, route)
    db.session.execute(update(Job).where(Job.id == claim.job_id).values(
        emails_sent=Job.emails_sent + len(sent), emails_failed=Job.emails_failed + len(failed),
        emails_bounced=Job.emails_bounced + len(bounced)))
    db.session.execute(update(Batch).where(Batch.id == claim.batch_id).values(
        sent_count=Batch.sent_count + len(sent), failed_count=Batch.failed_count + len(failed) + len(bounced)))
    db.session.commit()
    if bounced:
        suppress_bounced(claim.company_id, [b["rid"] for b in bounced])
    return {"sent": len(sent), "failed": len(failed), "retry": len(retry), "bounced": len(bounced)}


def suppress_bounced(company_id: int, recipient_ids: list[int]) -> None:
    """Hard bounces at send time suppress their addresses, like a bounce report does."""
    emails = db.session.execute(Recipient.scoped(company_id).with_only_columns(Recipient.email)
                                .where(Recipient.id.in_(recipient_ids))).scalars().all()
    for email in emails:
        suppress(company_id, email, LIST_BOUNCE)


def _set_outcomes(rows: list[dict], status: str, now, route: str) -> None:
    """Write one outcome for many recipients still ``sending``: one statement
    on PostgreSQL (``unnest`` of id/message-id/error arrays), executemany elsewhere."""
    if not rows:
        return
    sent = status == R_SENT
    final = status in (R_SENT, R_FAILED, R_BOUNCED)  # the route that settled it is kept
    if is_postgres():
        db.session.execute(text(
            "UPDATE recipients AS r SET status = :status, message_id = coalesce(v.mid, r.message_id), "
            "error = v.err, lease_until = NULL, sent_at = CASE WHEN :sent THEN :now ELSE r.sent_at END, "
            "route = CASE WHEN :final THEN :route ELSE r.route END "
            "FROM unnest(CAST(:ids AS integer[]), CAST(:mids AS text[]), CAST(:errs AS text[])) AS v(id, mid, err) "
            f"WHERE r.id = v.id AND r.status = '{R_SENDING}'"),
            {"status": status, "sent": sent, "final": final, "now": now, "route": route,
             "ids": [r["rid"] for r in rows], "mids": [r.get("mid") for r in rows],
             "errs": [r.get("err") for r in rows]})
        return
    table = Recipient.__table__
    values = {"status": status, "lease_until": None, "error": bindparam("err")}
    if sent:
        values.update(message_id=bindparam("mid"), sent_at=now)
    if final:
        values.update(route=route)
    db.session.execute(table.update().where(table.c.id == bindparam("rid"), table.c.status == R_SENDING)
                       .values(**values), [{"rid": r["rid"], "mid": r.get("mid"), "err": r.get("err")} for r in rows])


def pending_left(claim: Claim) -> int:
    return db.session.execute(text(
        "SELECT count(*) FROM recipients WHERE job_id = :j AND id BETWEEN :a AND :b "
        f"AND status IN {sql_in(RECIPIENT_OPEN)}"),
        {"j": claim.job_id, "a": claim.first_id, "b": claim.last_id}).scalar()


def fail_remaining(claim: Claim, reason: str) -> int:
    """Fail the batch's unsent recipients with ``reason`` (a permanent batch error)."""
    res = db.session.execute(text(
        f"UPDATE recipients SET status = '{R_FAILED}', error = :err, lease_until = NULL "
        f"WHERE job_id = :j AND id BETWEEN :a AND :b AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"),
        {"err": reason[:2000], "j": claim.job_id, "a": claim.first_id, "b": claim.last_id})
    db.session.execute(update(Job).where(Job.id == claim.job_id)
                       .values(emails_failed=Job.emails_failed + res.rowcount))
    db.session.commit()
    return res.rowcount


def fail_recipients(claim: Claim, failures: list[tuple[int, str]]) -> int:
    """Fail single unsent recipients of the batch, each with its own reason
    (a render error in offload mode); counts them on the job and the batch."""
    table = Recipient.__table__
    n = 0
    for rid, reason in failures:
        n += db.session.execute(table.update().where(
            table.c.id == rid, table.c.job_id == claim.job_id, table.c.status.in_(RECIPIENT_CLAIMABLE)).values(
            status=R_FAILED, error=reason[:2000], lease_until=None)).rowcount
    db.session.execute(update(Job).where(Job.id == claim.job_id).values(emails_failed=Job.emails_failed + n))
    db.session.execute(update(Batch).where(Batch.id == claim.batch_id).values(failed_count=Batch.failed_count + n))
    db.session.commit()
    return n


def log_job_error(job_id: int, line: str) -> None:
    job = db.session.get(Job, job_id)
    if job is not None:
        job.log_error(line)
        db.session.commit()


def pause_job(job_id: int, reason: str) -> None:
    db.session.execute(update(Job).where(Job.id == job_id, Job.status.notin_(JOB_FINAL))
                       .values(status=PAUSED, paused_reason=reason[:255], paused_at=utcnow()))
    db.session.commit()
    log_job_error(job_id, f"paused: {reason}")


def cancel_unsent(job_id: int) -> None:
    """A cancelled job: unsent recipients end ``cancelled``, idle batches too."""
    db.session.execute(text(
        f"UPDATE recipients SET status = '{R_CANCELLED}', error = 'cancelled', lease_until = NULL "
        f"WHERE job_id = :j AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"), {"j": job_id})
    db.session.execute(update(Batch).where(
        Batch.job_id == job_id, Batch.status.in_((*BATCH_WAITING, B_SUBMITTED)))
        .values(status=B_CANCELLED, completed_at=utcnow(), lease_until=None))
    db.session.commit()


def finish_job(job_id: int) -> str | None:
    """Give the job its final status and exact counts once nothing is left to do.

    Returns the final status, or ``None`` while work remains.
    """
    job = db.session.get(Job, job_id)
    if job is None or job.status in JOB_FINAL:
        return None if job is None else job.status
    if job.cancel_requested_at is not None:
        cancel_unsent(job_id)
    open_batches = db.session.execute(text(
        f"SELECT count(*) FROM batches WHERE job_id = :j AND status NOT IN {sql_in(BATCH_FINAL)}"),
        {"j": job_id}).scalar()
    if open_batches:  # the cheap check first: every batch's end calls this
        db.session.rollback()
        return None
    counts = dict(db.session.execute(text(
        "SELECT status, count(*) FROM recipients WHERE job_id = :j GROUP BY status"), {"j": job_id}).all())
    if sum(counts.get(s, 0) for s in RECIPIENT_OPEN):
        db.session.rollback()
        return None
    sent, bad = counts.get(R_SENT, 0), counts.get(R_FAILED, 0) + counts.get(R_BOUNCED, 0)
    if job.cancel_requested_at is not None:
        status = CANCELLED
    elif bad and not sent:
        status = FAILED
    elif bad:
        status = PARTIAL
    else:
        status = COMPLETED
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.status.notin_(JOB_FINAL)).values(
        status=status, completed_at=utcnow(), emails_sent=sent, emails_failed=counts.get(R_FAILED, 0),
        emails_bounced=counts.get(R_BOUNCED, 0), emails_suppressed=counts.get(R_SUPPRESSED, 0)))
    db.session.commit()
    return status if res.rowcount else db.session.get(Job, job_id).status


def create_batches(job_id: int, batch_size: int) -> list[int]:
    """Split the job's pending recipients into batches (keyset ranges of ids).

    Idempotent: nothing is created while the job has an unfinished batch.
    """
    job = db.session.get(Job, job_id)
    open_batches = db.session.execute(text(
        f"SELECT id FROM batches WHERE job_id = :j AND status NOT IN {sql_in(BATCH_FINAL)} ORDER BY id"),
        {"j": job_id}).scalars().all()
    if open_batches:
        return []
    ids = db.session.execute(text(
        f"SELECT id FROM recipients WHERE job_id = :j AND status IN {sql_in(RECIPIENT_CLAIMABLE)} ORDER BY id"),
        {"j": job_id}).scalars().all()
    number = db.session.execute(text("SELECT coalesce(max(batch_number), 0) FROM batches WHERE job_id = :j"),
                                {"j": job_id}).scalar()
    rows = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        number += 1
        rows.append({"company_id": job.company_id, "job_id": job_id, "batch_number": number, "status": B_QUEUED,
                     "first_recipient_id": chunk[0], "last_recipient_id": chunk[-1],
                     "recipient_count": len(chunk), "attempts": 0, "sent_count": 0, "failed_count": 0})
    if rows:
        db.session.execute(Batch.__table__.insert(), rows)
    db.session.commit()
    return list(db.session.execute(text(
        f"SELECT id FROM batches WHERE job_id = :j AND status = '{B_QUEUED}' ORDER BY batch_number"),
        {"j": job_id}).scalars())


def backoff(attempt: int, base: float = 5.0, cap: float = 600.0) -> float:
    """Exponential back-off with full jitter for retry ``attempt`` (1-based)."""
    return random.uniform(base / 2, min(cap, base * (2 ** max(0, attempt - 1))))
