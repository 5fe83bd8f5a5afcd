"""Who holds a batch: the claims, the lease, and the recipients in flight.

A batch is worked by one holder at a time. ``claim_send`` takes a waiting
batch (or one whose holder's lease ran out) into ``sending``; ``claim_submit``
takes a waiting batch straight into ``submitted``, with a callback deadline
past its lease. Both are one ``UPDATE`` that only one worker can win (the
database decides, not the queue). The holder renews its lease while it works
(``renew``) and gives the batch up in its next status (``release``); a holder
that dies leaves a lease that runs out, and the next claim takes over.

Recipients are claimed chunk by chunk just before their provider call
(``mark_sending``): a holder killed between the call and its results leaves
``sending`` rows, which the next holder turns ``uncertain`` by the company's
policy (``recover_in_flight``) instead of silently sending them again or
skipping them.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, select, text, update

from core import sendstats
from core.bulk import execute_for_ids
from core.db import db, rowcount
from core.models import (
    B_SENDING,
    B_SUBMITTED,
    BATCH_FINAL,
    BATCH_WAITING,
    PAUSED,
    PROCESSING,
    QUEUED,
    R_FAILED,
    R_PENDING,
    R_SENDING,
    R_UNCERTAIN,
    RECIPIENT_CLAIMABLE,
    RECIPIENT_OPEN,
    Batch,
    Job,
    Recipient,
    sql_in,
    utcnow,
)

#: a batch due within this many seconds may be claimed already (the ready set's clock and ours differ)
EARLY_S = 2


@dataclass
class Claim:
    """A batch ``worker`` holds in ``held`` (``sending`` or ``submitted``) until its lease runs out."""

    batch_id: int
    job_id: int
    company_id: int
    first_id: int
    last_id: int
    attempts: int
    worker: str
    held: str = B_SENDING


def worker_name() -> str:
    """This process, as a batch's ``leased_by`` names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_send(batch_id: int, worker: str, lease_s: int) -> Claim | None:
    """Take the batch into ``sending`` if it is waiting and due, or its holder's lease has run out."""
    return _claim(batch_id, worker, B_SENDING, lease_s, takeover=True)


def claim_submit(batch_id: int, worker: str, lease_s: int, timeout_s: int) -> Claim | None:
    """Take a waiting, due batch straight into ``submitted`` for its company's cloud queue.

    The callback deadline covers the lease too: if this worker dies before it
    records the outcome, the batch is settled like one whose callback never
    came (``core.delivery.recovery.settle_overdue``): the queue may or may not
    have the message, so it is neither silently sent twice nor lost.
    """
    return _claim(batch_id, worker, B_SUBMITTED, lease_s, takeover=False,
                  extra={"callback_deadline": utcnow() + timedelta(seconds=lease_s + timeout_s),
                         "callback_received_at": None})


def _claim(batch_id: int, worker: str, held: str, lease_s: int, *, takeover: bool,
           extra: dict | None = None) -> Claim | None:
    """The one claim: a single UPDATE only one worker wins; the attempt is counted with it."""
    now = utcnow()
    waiting = (f"(status IN {sql_in(BATCH_WAITING)} AND (next_attempt_at IS NULL OR next_attempt_at <= :soon))")
    expired = f" OR (status = '{B_SENDING}' AND lease_until < :now)" if takeover else ""
    sets = "".join(f", {column} = :{column}" for column in extra or {})
    res = db.session.execute(text(
        "UPDATE batches SET status = :held, lease_until = :lease, leased_by = :worker, "
        f"attempts = attempts + 1, next_attempt_at = NULL{sets} WHERE id = :id AND ({waiting}{expired})"),
        {"held": held, "lease": now + timedelta(seconds=lease_s), "worker": worker, "id": batch_id, "now": now,
         "soon": now + timedelta(seconds=EARLY_S), **(extra or {})})
    db.session.commit()
    if rowcount(res) != 1:
        return None
    b = db.session.execute(select(Batch.job_id, Batch.company_id, Batch.first_recipient_id,
                                  Batch.last_recipient_id, Batch.attempts).where(Batch.id == batch_id)).one()
    return Claim(batch_id, b.job_id, b.company_id, b.first_recipient_id, b.last_recipient_id, b.attempts, worker,
                 held)


def renew(claim: Claim, lease_s: int) -> bool:
    """Extend the lease; False when another worker has taken the batch."""
    res = db.session.execute(
        update(Batch).where(Batch.id == claim.batch_id, Batch.leased_by == claim.worker,
                            Batch.status == claim.held)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s)))
    db.session.commit()
    return rowcount(res) == 1


def release(claim: Claim, status: str, *, next_attempt_at: datetime | None = None, error: str | None = None,
            route: str | None = None, refund_attempt: bool = False) -> bool:
    """Give the batch up in ``status`` (done, retry, failed, cancelled, queued), unless someone else
    changed it meanwhile (a cancel, a callback that settled it, a worker that took the lease over).

    ``refund_attempt``: the run was no attempt (it only waited for tokens).
    """
    values: dict[str, Any] = {"status": status, "lease_until": None, "leased_by": None,
                              "next_attempt_at": next_attempt_at}
    if refund_attempt:
        values["attempts"] = Batch.attempts - 1
    if error is not None:
        values["error"] = error[:2000]
    if route is not None:
        values["route"] = route
    if status in BATCH_FINAL:
        values["completed_at"] = utcnow()
    res = db.session.execute(update(Batch).where(Batch.id == claim.batch_id, Batch.leased_by == claim.worker,
                                                 Batch.status == claim.held).values(**values))
    db.session.commit()
    return rowcount(res) == 1


def job_state(job_id: int) -> tuple[str, datetime | None]:
    """(status, cancel_requested_at) of a job, read fresh."""
    row = db.session.execute(select(Job.status, Job.cancel_requested_at).where(Job.id == job_id)).one()
    return row.status, row.cancel_requested_at


def mark_started(job_id: int) -> None:
    """The job's first batch (or certificate) is being worked: ``queued`` becomes ``processing``."""
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
        sendstats.record(claim.company_id, claim.job_id, {R_FAILED: len(ids)})
    else:
        execute_for_ids(f"UPDATE recipients SET status = '{R_UNCERTAIN}', lease_until = NULL WHERE {{ids}}", ids)
        db.session.execute(update(Job).where(Job.id == claim.job_id).values(
            emails_uncertain=Job.emails_uncertain + len(ids)))
    db.session.commit()
    return len(ids)


def load_sendable(claim: Claim) -> Sequence[Row[int, str, Any, int]]:
    """(id, email, data, attempts) of the batch's recipients still to send, by id."""
    return db.session.execute(
        select(Recipient.id, Recipient.email, Recipient.data, Recipient.attempts)
        .where(Recipient.job_id == claim.job_id, Recipient.id.between(claim.first_id, claim.last_id),
               Recipient.status.in_(RECIPIENT_CLAIMABLE))
        .order_by(Recipient.id)).all()


def mark_sending(claim: Claim, ids: list[int], lease_s: int) -> bool:
    """Claim recipients just before the provider call (attempt + 1), unless the
    job was cancelled or paused; False means stop: cancelled, paused, or the batch was lost.
    The batch's lease is renewed in the same transaction, so it covers the call."""
    params = {"j": claim.job_id, "lease": utcnow() + timedelta(seconds=lease_s), "b": claim.batch_id,
              "w": claim.worker}
    res = execute_for_ids(
        f"UPDATE recipients SET status = '{R_SENDING}', attempts = attempts + 1, lease_until = :lease "
        f"WHERE {{ids}} AND status IN {sql_in(RECIPIENT_CLAIMABLE)} "
        "AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = :j AND jobs.cancel_requested_at IS NULL "
        f"AND jobs.status <> '{PAUSED}') "
        "AND EXISTS (SELECT 1 FROM batches WHERE batches.id = :b AND batches.leased_by = :w "
        f"AND batches.status = '{B_SENDING}')", ids, params)
    if res.rowcount == len(ids):  # recipients first, then the batch: apply_results' lock order
        res = db.session.execute(
            update(Batch).where(Batch.id == claim.batch_id, Batch.leased_by == claim.worker,
                                Batch.status == B_SENDING).values(lease_until=params["lease"]))
        if rowcount(res) == 1:
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


def open_left(job_id: int, first_id: int, last_id: int) -> int:
    """How many of a batch's recipients are not final yet (pending, sending or uncertain)."""
    return db.session.execute(text(
        "SELECT count(*) FROM recipients WHERE job_id = :j AND id BETWEEN :a AND :b "
        f"AND status IN {sql_in(RECIPIENT_OPEN)}"), {"j": job_id, "a": first_id, "b": last_id}).scalar_one()
