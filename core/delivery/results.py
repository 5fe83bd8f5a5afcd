"""Applying results: one mapping of what happened to a message, whoever reports it.

Three sources say what became of recipients, and each turns its report into
``Outcome``s (a recipient id, a word, a message id, an error) for the one
``apply_results``:

- a provider's answer in direct mode (``record_results``: ``providers.Result``
  keyed by recipient id, for a chunk marked ``sending``);
- a cloud worker's signed callback in offload mode (``record_callback``:
  results by address, matched to the batch's open recipients, applied once
  per ``webhook-id``);
- a bounce report from a provider's webhook (``record_event``: a hard bounce
  turns a ``sent`` recipient ``bounced``; complaints and bounces suppress).

The words and what they do, the same for every source (``resolve``):

- ``sent``: the recipient is ``sent`` (message id, sent time, route), counted in ``emails_sent``;
- ``failed``: ``failed`` with its error, counted in ``emails_failed``;
- ``bounced``: ``bounced`` (``bounce: ...``), counted in ``emails_bounced``; the address joins the
  company's bounce list;
- ``suppressed``: ``suppressed``, counted in ``emails_suppressed``;
- ``retry``: ``pending`` again, sent later; ``failed`` (``gave up after N attempts: ...``) once its
  attempts reach ``OFFLOAD_MAX_ATTEMPTS``.

Only recipients in the statuses the source may settle change (``IN_FLIGHT``
for a provider's answer, ``OPEN`` for a callback, ``WAS_SENT`` for a report);
anything else is left alone, so a late or repeated report never moves a final
recipient. The job's counters and the batch's move by the rows that changed, and so do the
counts the pages read (``core.sendstats``), in the same transaction.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from core import queue, reputation, sendstats, settings, usage
from core.bulk import is_postgres
from core.db import db, rowcount
from core.delivery.claims import Claim, open_left
from core.delivery.settle import backoff, finish_job
from core.models import (
    B_DONE,
    B_RETRY,
    B_SENDING,
    B_SUBMITTED,
    BATCH_FINAL,
    COMPLAINT,
    HARD,
    LIST_BOUNCE,
    LIST_COMPLAINT,
    R_BOUNCED,
    R_FAILED,
    R_PENDING,
    R_SENDING,
    R_SENT,
    R_SUPPRESSED,
    RECIPIENT_CLAIMABLE,
    RECIPIENT_FINAL,
    RECIPIENT_OPEN,
    Batch,
    BounceEvent,
    DeliverySettings,
    Job,
    Recipient,
    Suppression,
    WebhookReceipt,
    utcnow,
)
from core.rendering import valid_email
from core.suppressions import DELIVERED, is_suppressed, normalize_email, suppress
from providers import Result, ResultStatus
from providers.base import safe_text
from providers.offload import worker_reason

log = logging.getLogger(__name__)

#: the words of an outcome (a provider's ``ResultStatus``, and ``suppressed``)
SENT, FAILED, BOUNCED, RETRY = ResultStatus.SENT, ResultStatus.FAILED, ResultStatus.BOUNCED, ResultStatus.RETRY
SUPPRESSED = str(R_SUPPRESSED)
WORDS = frozenset({SENT, FAILED, BOUNCED, RETRY, SUPPRESSED})

#: recipients a provider's answer settles: the chunk marked ``sending`` for its call
IN_FLIGHT = frozenset({R_SENDING})
#: recipients a callback settles: any not final yet
OPEN = RECIPIENT_OPEN
#: recipients a hard bounce report settles: sent, and now known not to have arrived
WAS_SENT = frozenset({R_SENT})

#: the job's counter of each status an outcome ends in
_JOB_COUNTERS = {R_SENT: "emails_sent", R_FAILED: "emails_failed", R_BOUNCED: "emails_bounced",
                 R_SUPPRESSED: "emails_suppressed"}


@dataclass(frozen=True)
class Outcome:
    """What became of one recipient: ``word`` is one of ``WORDS``; ``attempts`` are the
    attempts already spent on it (a ``retry`` past ``OFFLOAD_MAX_ATTEMPTS`` fails)."""

    recipient_id: int
    word: str
    message_id: str | None = None
    error: str | None = None
    attempts: int = 0


def resolve(outcome: Outcome, max_attempts: int | None) -> tuple[str, str | None]:
    """The recipient status and error an outcome ends in."""
    word, error = outcome.word, outcome.error
    if word == SENT:
        return R_SENT, None
    if word == FAILED:
        return R_FAILED, error or "failed"
    if word == BOUNCED:
        return R_BOUNCED, f"bounce: {error or 'hard'}"
    if word == SUPPRESSED:
        return R_SUPPRESSED, error or "suppressed"
    if word == RETRY:
        if max_attempts is None:
            raise ValueError("a retry outcome needs max_attempts")
        if outcome.attempts >= max_attempts:
            return R_FAILED, f"gave up after {outcome.attempts} attempts: {error or 'retry'}"
        return R_PENDING, error or "retry"
    raise ValueError(f"no outcome {word!r}")


def apply_results(outcomes: Iterable[Outcome], *, company_id: int, job_id: int, batch_id: int | None = None,
                  route: str | None = None, max_attempts: int | None = None,
                  settles: frozenset = IN_FLIGHT, commit: bool = True,
                  used: Mapping[str, float] | None = None, handed_at: datetime | None = None) -> dict[str, int]:
    """Apply outcomes of one job's recipients in bulk (one statement per status) and move
    the job's counters (and the batch's, with ``batch_id``) by the rows that changed.

    ``settles``: the statuses a recipient may be in for this source to change it.
    ``route`` is kept on recipients that end final (``None``: theirs stays). With
    ``commit`` the transaction is committed here and bounced addresses join the
    company's bounce list; without, the caller commits (and suppresses). ``used``:
    the cloud the outcomes used (``core.usage`` meters), added in the same transaction.
    The counts the pages read move with them (``core.sendstats``; ``handed_at``: when a
    recipient a report now says bounced was handed over).

    Returns how many changed, by word: ``sent``, ``failed``, ``bounced``,
    ``suppressed``, ``retry``.
    """
    now = utcnow()
    groups: dict[str, list[tuple[int, str | None, str | None]]] = defaultdict(list)
    for outcome in outcomes:
        status, error = resolve(outcome, max_attempts)
        groups[status].append((outcome.recipient_id, outcome.message_id if status == R_SENT else None,
                               None if error is None else error[:2000]))
    moved = {status: _write(rows, status, now, route, settles) for status, rows in groups.items()}
    counters = {column: getattr(Job, column) + moved[status] for status, column in _JOB_COUNTERS.items()
                if moved.get(status)}
    unsent = 0
    if R_SENT in settles and counters:  # a report moved a sent recipient: no longer counted as sent
        unsent = sum(n for status, n in moved.items() if status != R_SENT)
        counters["emails_sent"] = Job.emails_sent - unsent
    if counters:
        db.session.execute(update(Job).where(Job.id == job_id).values(**counters))
        sendstats.record(company_id, job_id, moved, route=route, unsent=unsent, handed_at=handed_at)
    bad = moved.get(R_FAILED, 0) + moved.get(R_BOUNCED, 0) + moved.get(R_SUPPRESSED, 0)
    if batch_id is not None and (moved.get(R_SENT) or bad):
        db.session.execute(update(Batch).where(Batch.id == batch_id).values(
            sent_count=Batch.sent_count + moved.get(R_SENT, 0), failed_count=Batch.failed_count + bad))
    if used:
        usage.add(company_id, job_id, used)
    if commit:
        db.session.commit()
        if moved.get(R_BOUNCED):
            suppress_bounced(company_id, [rid for rid, _, _ in groups[R_BOUNCED]])
            reputation.judge(company_id)
    return {"sent": moved.get(R_SENT, 0), "failed": moved.get(R_FAILED, 0), "bounced": moved.get(R_BOUNCED, 0),
            "suppressed": moved.get(R_SUPPRESSED, 0), "retry": moved.get(R_PENDING, 0)}


def suppress_bounced(company_id: int, recipient_ids: list[int]) -> None:
    """Hard bounces at send time suppress their addresses, like a bounce report does."""
    emails = db.session.execute(Recipient.scoped(company_id).with_only_columns(Recipient.email)
                                .where(Recipient.id.in_(recipient_ids))).scalars().all()
    for email in emails:
        suppress(company_id, email, LIST_BOUNCE)


def _write(rows: list[tuple[int, str | None, str | None]], status: str, now: datetime, route: str | None,
           settles: frozenset) -> int:
    """Write one status for many recipients still in ``settles``; returns how many changed.

    One statement on PostgreSQL (``unnest`` of id/message-id/error arrays), executemany elsewhere.
    A sent recipient's ``sent_at`` is now; a bounced one keeps the time it was handed over (a bounce
    at send time: now), so the rates count it by that time (``core.counts``).
    """
    sent = status == R_SENT
    bounced = status == R_BOUNCED
    keep_route = status in RECIPIENT_FINAL and route is not None  # the route that settled it is kept
    if is_postgres():
        return rowcount(db.session.execute(text(
            "UPDATE recipients AS r SET status = :status, message_id = coalesce(v.mid, r.message_id), "
            "error = v.err, lease_until = NULL, sent_at = CASE WHEN :sent THEN :now "
            "WHEN :bounced THEN coalesce(r.sent_at, :now) ELSE r.sent_at END, "
            "route = CASE WHEN :keep_route THEN :route ELSE r.route END "
            "FROM unnest(CAST(:ids AS integer[]), CAST(:mids AS text[]), CAST(:errs AS text[])) AS v(id, mid, err) "
            "WHERE r.id = v.id AND r.status = ANY(CAST(:settles AS text[]))"),
            {"status": status, "sent": sent, "bounced": bounced, "keep_route": keep_route, "now": now, "route": route,
             "ids": [r[0] for r in rows], "mids": [r[1] for r in rows], "errs": [r[2] for r in rows],
             "settles": [str(s) for s in sorted(settles)]}))
    table = Recipient.__table__
    values: dict[str, Any] = {"status": status, "lease_until": None, "error": bindparam("err")}
    if sent:
        values.update(message_id=func.coalesce(bindparam("mid"), table.c.message_id), sent_at=now)
    elif bounced:
        values.update(sent_at=func.coalesce(table.c.sent_at, now))
    if keep_route:
        values.update(route=route)
    where = or_(*(table.c.status == s for s in sorted(settles)))  # no IN: executemany
    return rowcount(db.session.execute(table.update().where(table.c.id == bindparam("rid"), where).values(**values),
                                       [{"rid": r[0], "mid": r[1], "err": r[2]} for r in rows]))


# -- a provider's answer (direct mode) -------------------------------------------------------

def record_results(claim: Claim, results: list[Result], route: str, max_attempts: int,
                   attempts: dict[int, int], used: Mapping[str, float] | None = None,
                   commit: bool = True) -> dict[str, int]:
    """Store one chunk's ``providers.Result``s (keyed by recipient id) and bump the counters;
    ``attempts``: each recipient's attempts with this one; ``used``: what the call used.
    ``commit=False``: in the caller's transaction (only for results that are all ``sent``: a
    bounce's suppression follows the commit, which is then the caller's)."""
    if not commit and any(r.status != SENT for r in results):
        raise ValueError("only sent results may wait for the caller's commit")
    return apply_results([Outcome(r.key, r.status, r.message_id, r.error, attempts.get(r.key, 0)) for r in results],
                         company_id=claim.company_id, job_id=claim.job_id, batch_id=claim.batch_id, route=route,
                         max_attempts=max_attempts, used=used, commit=commit)


def fail_recipients(claim: Claim, failures: list[tuple[int, str]]) -> int:
    """Fail single unsent recipients of the batch, each with its own reason (a render error in
    offload mode): ``failed`` outcomes of recipients not yet handed to anyone."""
    applied = apply_results([Outcome(rid, FAILED, error=reason) for rid, reason in failures],
                            company_id=claim.company_id, job_id=claim.job_id, batch_id=claim.batch_id,
                            settles=RECIPIENT_CLAIMABLE)
    return applied["failed"]


# -- a cloud worker's callback (offload mode, CONTRACT §4) --------------------------------------

def record_callback(batch: Batch, webhook_id: str, results: list[dict],
                    reported: dict | None = None) -> dict[str, int] | None:
    """Apply one verified callback's results; ``None`` when ``webhook_id`` was already applied.

    The receipt is written in the same transaction as the results, first, so
    a concurrent duplicate waits on it and then fails the unique constraint.
    Only recipients not yet final change; results for others are ignored. A
    result may hand back a recipient the worker did not send (``"retryable":
    true``, or ``retry``): it goes back to ``pending`` and only such recipients
    are re-submitted, so a batch cut short never emails anyone twice.
    ``reported``: the callback's ``usage`` (the worker's measured time and memory).
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
        counts, bounced = _apply_callback(batch, results, reported)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return None
    if bounced:
        suppress_bounced(company_id, bounced)
        reputation.judge(company_id)
    if counts["resubmit_in"] is not None:  # only the unsent ones go out again (after the commit)
        queue.enqueue_submit([batch.id], delay=counts["resubmit_in"])
    finish_job(job_id)
    return counts


def callback_outcomes(batch: Batch, results: list[dict]) -> tuple[list[Outcome], int]:
    """The outcomes a callback's results name (by address, each to one open recipient of the
    batch, in id order), and how many results named none or an unknown word."""
    open_rows = db.session.execute(
        select(Recipient.id, Recipient.email).where(
            Recipient.job_id == batch.job_id,
            Recipient.id.between(batch.first_recipient_id, batch.last_recipient_id),
            Recipient.status.in_(OPEN)).order_by(Recipient.id)).all()
    by_email: dict[str, list[int]] = defaultdict(list)
    for rid, email in open_rows:
        by_email[email].append(rid)
    outcomes, ignored = [], 0
    for result in results:
        ids = by_email.get(result["email"])
        word = result["status"]
        if not ids or word not in WORDS:
            ignored += 1
            continue
        if word == FAILED and result.get("retryable") is True:
            word = RETRY  # not sent: the worker hands it back
        outcomes.append(Outcome(ids.pop(0), word, result.get("message_id") or None,
                                worker_reason(result.get("error"), word), batch.attempts))
    return outcomes, ignored


def _apply_callback(batch: Batch, results: list[dict], reported: dict | None = None) -> tuple[dict, list[int]]:
    outcomes, ignored = callback_outcomes(batch, results)
    now = utcnow()
    counts = apply_results(outcomes, company_id=batch.company_id, job_id=batch.job_id, batch_id=batch.id,
                           route=batch.route or "offload", max_attempts=settings.current().max_attempts,
                           settles=OPEN, commit=False, used=callback_usage(batch.company_id, results, reported))
    left = open_left(batch.job_id, batch.first_recipient_id, batch.last_recipient_id)
    db.session.execute(update(Batch).where(Batch.id == batch.id).values(callback_received_at=now))
    if not left:
        # a batch a worker holds (SMTP fallback in progress) is closed by that worker
        db.session.execute(update(Batch).where(
            Batch.id == batch.id, Batch.status.notin_((*BATCH_FINAL, B_SENDING))).values(
            status=B_DONE, completed_at=now, lease_until=None, leased_by=None))
    resubmit_in = None
    if left and counts["retry"]:
        delay = backoff(batch.attempts)
        back = update(Batch).where(Batch.id == batch.id, Batch.status == B_SUBMITTED).values(
            status=B_RETRY, next_attempt_at=now + timedelta(seconds=delay), lease_until=None, leased_by=None,
            error="the cloud worker handed back unsent recipients")
        moved = rowcount(db.session.execute(back))
        resubmit_in = delay if moved else None
    applied = sum(counts.values())
    bounced = [o.recipient_id for o in outcomes if o.word == BOUNCED] if counts["bounced"] else []
    return {**counts, "resubmit_in": resubmit_in, "ignored": ignored + len(outcomes) - applied}, bounced


def callback_usage(company_id: int, results: list[dict], reported: dict | None = None) -> dict[str, float]:
    """What a cloud worker's delivery used, from its callback: one delivery (an invocation and its
    marker), the emails its provider sent (the ``sent`` results), and the worker's time: measured
    when the callback reports it (the Lambda's ``usage``: milliseconds and memory, as GB-seconds),
    else the recipients it handled, which the price table's per-email time turns into time."""
    provider = db.session.execute(select(DeliverySettings.provider).where(
        DeliverySettings.company_id == company_id)).scalar()
    worker = usage.WORKER_OF.get(provider) if provider else None
    if worker is None:
        return {}
    sent = sum(1 for r in results if r.get("status") == SENT)
    used: dict[str, float] = {f"deliveries:{worker}": 1, f"emails:{provider}": sent}
    reported = reported or {}
    if worker == "lambda" and reported.get("duration_ms") is not None and reported.get("memory_mb"):
        used["lambda:measured"] = 1
        used["lambda:gb_seconds"] = reported["duration_ms"] / 1000 * reported["memory_mb"] / 1024
    else:
        used[f"worker_emails:{worker}"] = len(results)
    return used


# -- a bounce or complaint report (a provider's webhook) -------------------------------------------

def match_recipient(company_id: int, email: str, message_id: str | None):
    """(id, job_id, status, email, route, sent_at) of the recipient a report is about, or ``None``."""
    base = Recipient.scoped(company_id).with_only_columns(Recipient.id, Recipient.job_id, Recipient.status,
                                                          Recipient.email, Recipient.route, Recipient.sent_at)
    if message_id:
        rows = db.session.execute(base.where(Recipient.message_id == message_id)).all()
        for row in rows:
            if len(rows) == 1 or normalize_email(row.email) == email:
                return row
    return db.session.execute(
        base.where(func.lower(Recipient.email) == email, Recipient.status.in_(DELIVERED))
        .order_by(Recipient.id.desc()).limit(1)).first()


def record_event(company_id: int, *, source: str, key: str, kind: str, email: str,
                 message_id: str | None = None, detail: str | None = None) -> bool:
    """Apply one bounce/complaint report once (``BounceEvent.event_key``); True when it was new.

    A hard bounce makes the matching recipient (by message id, else the latest
    one sent to the address) ``bounced``; a hard bounce or a complaint puts the
    address on its list; a soft bounce is only counted.
    """
    email = normalize_email(email)
    if not valid_email(email):
        return False
    for _ in range(2):  # a concurrent delivery of the same report or address: look again
        try:
            applied = _apply_report(company_id, source, key, kind, email, message_id, detail)
            db.session.commit()
            if applied and kind in (HARD, COMPLAINT):
                reputation.judge(company_id)
            return applied
        except IntegrityError:
            db.session.rollback()
    return False


def _apply_report(company_id, source, key, kind, email, message_id, detail) -> bool:
    detail = safe_text(detail) or None  # the report's diagnostic is remote text: plain characters, bounded
    seen = BounceEvent.scoped(company_id).with_only_columns(BounceEvent.id).where(BounceEvent.event_key == key)
    if db.session.execute(seen).first() is not None:
        return False
    found = match_recipient(company_id, email, message_id)
    db.session.add(BounceEvent(company_id=company_id, event_key=key, source=source, kind=kind, email=email,
                               message_id=(message_id or None) and message_id[:255],
                               job_id=found.job_id if found else None, recipient_id=found.id if found else None,
                               detail=(detail or "")[:255] or None))
    if kind == HARD and found is not None:
        apply_results([Outcome(found.id, BOUNCED, error=detail)], company_id=company_id, job_id=found.job_id,
                      route=found.route, settles=WAS_SENT, commit=False, handed_at=found.sent_at)
    listed = LIST_BOUNCE if kind == HARD else LIST_COMPLAINT
    if kind in (HARD, COMPLAINT) and not is_suppressed(company_id, email, listed):
        db.session.add(Suppression(company_id=company_id, email=email, reason=listed))
    db.session.flush()
    return True
