"""Jobs: create (validate, store, enqueue), describe, cancel and retry.

Creating a job only validates and stores; the sending happens in ``tasks``.
Shared by the LMS API, the dashboard and the events buffer.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from core import audit, fields, reputation, sendstats, suppressions, usage
from core.bulk import execute_for_ids, insert_recipients
from core.counts import job_counts
from core.db import db, rowcount
from core.delivery import plan
from core.models import (
    BATCH_WAITING,
    COMPLETED,
    DEFAULT_PRIORITY,
    FAILED,
    JOB_TYPES,
    PARTIAL,
    PAUSED,
    PRIORITIES,
    PROCESSING,
    QUEUED,
    R_FAILED,
    R_PENDING,
    R_SUPPRESSED,
    Batch,
    Company,
    Job,
    Template,
    is_bulk,
    utcnow,
)
from core.prices import Estimate
from core.queue import enqueue_finish, enqueue_plan
from core.rendering import PREVIEW_BUDGET_S, CompiledTemplate, RenderError, valid_email

IDEMPOTENCY_WINDOW = timedelta(hours=24)
RETRYABLE_STATUSES = (COMPLETED, PARTIAL, FAILED)


class JobError(ValueError):
    """The request cannot make a job; ``code`` and ``details`` go into the 400."""

    def __init__(self, code: str, message: str, details=None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


@dataclass
class JobRequest:
    type: str
    recipients: list
    subject: str | None = None
    body_text: str | None = None
    body_html: str | None = None
    template: str | None = None
    send_at: datetime | None = None
    options: dict | None = None
    priority: str = "transactional"
    #: a recipient whose data lacks a field: ``reject`` the request (400), or ``fail_recipient`` alone
    on_missing: str = "reject"


def parse_request(payload) -> JobRequest:
    """Check the shape of a create-job body (CONTRACT §3); raise JobError."""
    if not isinstance(payload, dict):
        raise JobError("invalid_json", "the body must be a JSON object")
    jtype = payload.get("type")
    if jtype not in JOB_TYPES:
        raise JobError("invalid_type", f"type must be one of {', '.join(JOB_TYPES)}", {"type": jtype})
    recipients = payload.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise JobError("no_recipients", "recipients must be a non-empty list")
    for key in ("subject", "body_text", "body_html", "template"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            raise JobError("invalid_field", f"{key} must be a string")
    priority = payload.get("priority")
    if priority is None:
        priority = DEFAULT_PRIORITY[jtype]
    elif priority not in PRIORITIES:
        raise JobError("invalid_priority", f"priority must be one of {', '.join(PRIORITIES)}",
                       {"priority": priority})
    on_missing = payload.get("on_missing") or "reject"
    if on_missing not in fields.ON_MISSING:
        raise JobError("invalid_field", f"on_missing must be one of {', '.join(fields.ON_MISSING)}",
                       {"on_missing": on_missing})
    return JobRequest(type=jtype, recipients=recipients, subject=payload.get("subject"),
                      body_text=payload.get("body_text"), body_html=payload.get("body_html"),
                      template=payload.get("template"), send_at=parse_time(payload.get("send_at"), "send_at"),
                      options=parse_options(payload), priority=str(priority), on_missing=on_missing)


JOB_OPTIONS = {"certificate_delivery": ("link", "attachment")}


def parse_options(payload: dict) -> dict | None:
    """The job-level options a request may set (each with its allowed values)."""
    options = {}
    for key, allowed in JOB_OPTIONS.items():
        value = payload.get(key)
        if value is None:
            continue
        if value not in allowed:
            raise JobError("invalid_field", f"{key} must be one of {', '.join(allowed)}")
        options[key] = value
    return options or None


def parse_time(value, field: str) -> datetime | None:
    """ISO 8601 → naive UTC; ``None`` stays ``None``."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise JobError("invalid_field", f"{field} must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise JobError("invalid_field", f"{field} is not an ISO 8601 date-time") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def resolve_content(company_id: int, req: JobRequest) -> tuple[str, str | None, str | None]:
    """Subject and bodies, inline or from the company's stored template."""
    if req.template:
        tpl = db.session.execute(Template.scoped(company_id).where(Template.name == req.template)).scalar_one_or_none()
        if tpl is None:
            raise JobError("template_not_found", f"no template named {req.template!r}")
        return tpl.subject, tpl.body_text, tpl.body_html
    return req.subject or "", req.body_text, req.body_html


#: variables the service adds to each recipient's data before the mail is rendered, per job type; the
#: sample render at submit gets these stand-ins (undefined is strict: without them it would fail)
SERVICE_VARIABLES = {
    "certificate": {"certificate_code": "SAMPLE0CODE000000000",
                    "certificate_url": "https://example.invalid/certificates/SAMPLE0CODE000000000/download",
                    "verify_url": "https://example.invalid/verify/SAMPLE0CODE000000000"},
}
#: what bulk mail's sample render gets for the unsubscribe link the service adds to each recipient
SAMPLE_UNSUBSCRIBE_URL = "https://example.invalid/u/SAMPLE"


def service_sample(job_type: str | None, bulk: bool) -> dict:
    """Stand-ins for what the service adds to a recipient's data of this kind of mail."""
    found = dict(SERVICE_VARIABLES.get(job_type or "", {}))
    if bulk:
        found["unsubscribe_url"] = SAMPLE_UNSUBSCRIBE_URL
    return found


def compile_checked(subject, text_body, html_body, sample: dict | None,
                    job_type: str | None = None, bulk: bool = False) -> CompiledTemplate:
    """Compile and test-render once, so template errors are a 400 now, not failures later."""
    try:
        sample = {**service_sample(job_type, bulk), **(sample if isinstance(sample, dict) else {})}
        compiled, _ = CompiledTemplate.checked(subject, text_body, html_body, sample, PREVIEW_BUDGET_S)
    except RenderError as exc:
        raise JobError("template_error", str(exc), {"part": exc.part}) from None
    return compiled


def compile_only(subject, text_body, html_body) -> CompiledTemplate:
    """Compile (no render); a template error is a ``JobError``."""
    try:
        return CompiledTemplate(subject, text_body, html_body)
    except RenderError as exc:
        raise JobError("template_error", str(exc), {"part": exc.part}) from None


def lacking_fields(job_type: str, compiled: CompiledTemplate, recipients: list, *, bulk: bool) -> dict[int, list[str]]:
    """Index → the fields that recipient's data lacks (``core.fields.missing``), for the recipients
    that would be sent (the others fail for their shape or address)."""
    found = {}
    check = fields.checker(job_type, compiled.required, bulk=bulk)
    for index, item in enumerate(recipients):
        if not isinstance(item, dict):
            continue
        data = item.get("data")
        if data is not None and not isinstance(data, dict):
            continue
        lacking = check(data)
        if lacking and valid_email(str(item.get("email") or "").strip()):
            found[index] = lacking
    return found


def missing_error(recipients: list, lacking: dict[int, list[str]]) -> JobError:
    """The 400 for recipients with missing fields: the fields, how many, and the first recipients."""
    names = sorted({name for found in lacking.values() for name in found})
    first: list[dict[str, Any]] = [
        {"index": i, "email": str(recipients[i].get("email"))[:320], "fields": lacking[i]}
        for i in sorted(lacking)[:fields.NAMED_RECIPIENTS]]
    shown = "; ".join(f"recipient {r['index']} ({r['email']}): {', '.join(r['fields'])}" for r in first[:3])
    more = f"; and {len(lacking) - 3} more" if len(lacking) > 3 else ""
    count = len(lacking)
    message = (f"{count} recipient{'s' if count != 1 else ''} lack{'s' if count == 1 else ''} "
               f"{', '.join(names)}, which the mail needs ({shown}{more}). Nothing was sent with a blank: add the "
               "fields to each recipient's data, or send \"on_missing\": \"fail_recipient\" to fail those "
               "recipients alone and send the rest.")
    return JobError(fields.MISSING, message, {"fields": names, "count": count, "recipients": first})


def classify_recipients(company_id: int, job_id: int, items: list, *, bulk: bool,
                        distinct: bool = True, lacking: dict[int, list[str]] | None = None,
                        suppressed: dict[str, set[str]] | None = None) -> tuple[list[tuple], dict]:
    """Rows for ``insert_recipients`` and counts by status. Bad entries are kept
    as failed recipients with a reason; duplicates (when ``distinct``) and
    suppressed addresses too, naming the suppression list that stopped them
    (the lists that apply to ``bulk`` mail or to transactional mail); ``lacking``
    (index → fields) fail for the fields their data lacks. ``suppressed``: the company's
    ``suppressions.suppressed_addresses`` when the caller read them already (many jobs at once)."""
    if suppressed is None:
        suppressed = suppressions.suppressed_addresses(company_id, bulk)
    seen: set[str] = set()
    rows: list[tuple] = []
    counts: dict[str, int] = {R_PENDING: 0, R_FAILED: 0, R_SUPPRESSED: 0}
    lacking = lacking or {}
    for index, item in enumerate(items):
        email, data, status, error = _one_recipient(item)
        if status == R_PENDING and index in lacking:
            status, error = R_FAILED, fields.describe_missing(lacking[index])
        if status == R_PENDING:
            key = email.lower()
            if key in suppressed:
                status, error = R_SUPPRESSED, suppressions.suppressed_error(suppressed[key])
            elif distinct and key in seen:
                status, error = R_FAILED, "duplicate"
            seen.add(key)
        counts[status] += 1
        rows.append((company_id, job_id, email, data, status, error))
    return rows, counts


def _one_recipient(item) -> tuple[str, dict | None, str, str | None]:
    if not isinstance(item, dict):
        return str(item)[:320], None, R_FAILED, "invalid_recipient"
    email = item.get("email")
    data = item.get("data")
    if data is not None and not isinstance(data, dict):
        return str(email)[:320], None, R_FAILED, "invalid_data"
    if not isinstance(email, str) or not valid_email(email.strip()):
        shown = email if isinstance(email, str) else repr(email)
        return shown.replace("\r", " ").replace("\n", " ").replace("\x00", " ")[:320], data, R_FAILED, "invalid_email"
    return email.strip(), data, R_PENDING, None


def find_idempotent(company_id: int, key: str) -> Job | None:
    """The job created with ``key`` in the last 24 h, if any; an older one releases the key."""
    job = db.session.execute(Job.scoped(company_id).where(Job.idempotency_key == key)).scalar_one_or_none()
    if job is not None and job.created_at < utcnow() - IDEMPOTENCY_WINDOW:
        job.idempotency_key = None
        db.session.flush()
        return None
    return job


def create_job(company_id: int, payload, *, idempotency_key: str | None = None, source: str = "api",
               user_id: int | None = None, max_recipients: int = 50_000,
               before_commit=None, distinct: bool = True) -> tuple[Job, bool]:
    """Validate and store a job with its recipients; returns (job, created).

    ``before_commit(job)`` runs after the recipients are inserted, in the same
    transaction (the LMS connector records which IOMAD rows the job took).
    ``distinct=False`` keeps recipients that share an address (the LMS
    connector's jobs: one message per IOMAD row, several rows to one manager).

    The caller commits nothing: this commits, then the job is enqueued by
    ``core.queue.enqueue_job``.
    """
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= 255:
            raise JobError("invalid_idempotency_key", "Idempotency-Key must have 1 to 255 characters")
        existing = find_idempotent(company_id, idempotency_key)
        if existing is not None:
            return existing, False
    req = parse_request(payload)
    if len(req.recipients) > max_recipients:
        raise JobError("too_many_recipients", f"at most {max_recipients} recipients per job",
                       {"count": len(req.recipients)})
    subject, text_body, html_body = resolve_content(company_id, req)
    bulk = is_bulk(req.type, req.priority)
    # every recipient's data against what the mail needs (core.fields), before anything is stored
    lacking = lacking_fields(req.type, compile_only(subject, text_body, html_body), req.recipients, bulk=bulk)
    if lacking and req.on_missing != "fail_recipient":
        raise missing_error(req.recipients, lacking)
    # the sample render: the first recipient that is to be sent (or the first one, whose error it shows)
    first = next((r for i, r in enumerate(req.recipients) if i not in lacking and isinstance(r, dict)),
                 req.recipients[0])
    compile_checked(subject, text_body, html_body, first.get("data") if isinstance(first, dict) else None,
                    req.type, bulk)

    job = Job(company_id=company_id, type=req.type, status=QUEUED, source=source, subject=subject,
              body_text=text_body, body_html=html_body, template_name=req.template, send_at=req.send_at,
              idempotency_key=idempotency_key, created_by_user_id=user_id, options=req.options,
              priority=req.priority)
    db.session.add(job)
    try:
        db.session.flush()
    except IntegrityError:  # a concurrent request with the same key won
        db.session.rollback()
        winner = find_idempotent(company_id, idempotency_key) if idempotency_key else None
        if winner is None:  # not the key's race
            raise
        return winner, False
    rows, counts = classify_recipients(company_id, job.id, req.recipients, bulk=bulk, distinct=distinct,
                                       lacking=lacking)
    insert_recipients(rows)
    job.email_count = len(rows)
    job.emails_failed = counts[R_FAILED]
    job.emails_suppressed = counts[R_SUPPRESSED]
    sendstats.record(company_id, job.id, counts)  # refused addresses are final at acceptance
    if before_commit is not None:
        before_commit(job)
    audit.record("job_created", company_id=company_id, object_type="job", object_id=job.id,
                 details={"type": job.type, "recipients": len(rows), "source": source})
    commit_keeping(job)
    return job, True


def create_jobs(company_id: int, job_type: str, template: str, groups: list[list], *, source: str,
                before_commit: Callable[[list[tuple[int, Job]], dict[int, JobError]], None] | None = None,
                ) -> tuple[list[tuple[int, Job]], dict[int, JobError]]:
    """Many small jobs of one stored template in one transaction (a window's single events): each group of
    recipients becomes the job ``create_job`` makes of it with ``on_missing: fail_recipient`` and the
    type's default priority: the same rows, counts and audit entry, but one template read, one compile, one
    round trip to the renderer for every group's sample render, one suppression read, one insert of all
    the recipients and one commit, instead of one of each per job.

    Returns the jobs made, ``(group index, job)``, and the groups that made none with their ``JobError``
    (their sample render failed). A ``JobError`` of the template itself (gone, broken) is raised: no group
    can make a job. ``before_commit(made, failed)`` runs after the inserts, in the transaction."""
    priority = DEFAULT_PRIORITY[job_type]
    req = JobRequest(type=job_type, recipients=[], template=template, priority=priority,
                     on_missing="fail_recipient")
    subject, text_body, html_body = resolve_content(company_id, req)
    bulk = is_bulk(job_type, priority)
    compiled = compile_only(subject, text_body, html_body)
    lacking = [lacking_fields(job_type, compiled, group, bulk=bulk) for group in groups]
    samples = []
    for group, missing in zip(groups, lacking, strict=True):
        first = next((r for i, r in enumerate(group) if i not in missing and isinstance(r, dict)), group[0])
        data = first.get("data") if isinstance(first, dict) else None
        samples.append({**service_sample(job_type, bulk), **(data if isinstance(data, dict) else {})})
    failed: dict[int, JobError] = {}
    for index, outcome in enumerate(compiled.render_many(samples, PREVIEW_BUDGET_S)):
        if outcome is None:  # the shared budget ran out before it: its own render, as create_job's
            try:
                compiled.render(samples[index], PREVIEW_BUDGET_S)
            except RenderError as exc:
                outcome = exc
        if isinstance(outcome, RenderError):
            failed[index] = JobError("template_error", str(outcome), {"part": outcome.part})
    kept = [i for i in range(len(groups)) if i not in failed]
    jobs = [Job(company_id=company_id, type=job_type, status=QUEUED, source=source, subject=subject,
                body_text=text_body, body_html=html_body, template_name=template, priority=priority)
            for _ in kept]
    db.session.add_all(jobs)
    db.session.flush()  # one INSERT ... RETURNING for all (SQLAlchemy's insertmanyvalues)
    suppressed = suppressions.suppressed_addresses(company_id, bulk)
    rows: list[tuple] = []
    for index, job in zip(kept, jobs, strict=True):
        made, counts = classify_recipients(company_id, job.id, groups[index], bulk=bulk, lacking=lacking[index],
                                           suppressed=suppressed)
        rows += made
        job.email_count = len(made)
        job.emails_failed = counts[R_FAILED]
        job.emails_suppressed = counts[R_SUPPRESSED]
        sendstats.record(company_id, job.id, counts)
        audit.record("job_created", company_id=company_id, object_type="job", object_id=job.id,
                     details={"type": job.type, "recipients": len(made), "source": source})
    insert_recipients(rows)
    made = list(zip(kept, jobs, strict=True))
    if before_commit is not None:
        before_commit(made, failed)
    commit_keeping(*jobs)
    return made, failed


def commit_keeping(*objs) -> None:
    """Commit, keeping each of ``objs``' column values loaded (no reload round trip)."""
    kept = [(obj, {attr.key: getattr(obj, attr.key) for attr in type(obj).__mapper__.column_attrs}) for obj in objs]
    db.session.commit()
    for obj, values in kept:
        for key, value in values.items():
            set_committed_value(obj, key, value)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(microsecond=0).isoformat() + "Z"


def job_to_dict(job: Job, cost: Estimate | None = None) -> dict:
    """The job object of CONTRACT §3 (plus a few extra counters), its counts from ``core.counts``:
    ``emails_failed`` never includes ``emails_bounced``; ``cost``: the cloud it used so far at the
    price table's list prices (``core.usage``; pass it when it is known already)."""
    found = job_counts(job)
    cost = cost if cost is not None else usage.job_cost(job.company_id, job.id)
    return {
        "id": job.id, "type": job.type, "priority": job.priority, "status": job.status, "source": job.source,
        "company_id": job.company_id,
        "email_count": found.total, "emails_sent": found.sent, "emails_failed": found.failed,
        "emails_suppressed": found.suppressed, "emails_bounced": found.bounced,
        "emails_uncertain": job.emails_uncertain or 0,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at), "send_at": iso(job.send_at),
        "paused_reason": job.paused_reason,
        "cost": cost.to_dict(),
    }


def request_cancel(job: Job) -> bool:
    """Record a cancel; workers stop between chunks. Returns False if already final."""
    if job.is_final:
        return False
    now = utcnow()
    db.session.execute(update(Job).where(Job.id == job.id).values(cancel_requested_at=now))
    audit.record("job_cancelled", company_id=job.company_id, object_type="job", object_id=job.id)
    db.session.commit()

    enqueue_finish(job.id)
    return True


def retry_failed(job: Job) -> int:
    """Put the job's failed recipients back to pending in new batches; returns how many."""
    if job.status not in RETRYABLE_STATUSES:
        raise JobError("job_not_final", "only a finished job's failed recipients can be retried")
    ids = list(db.session.execute(text(
        f"SELECT id FROM recipients WHERE job_id = :j AND status = '{R_FAILED}' "
        "AND (error IS NULL OR error NOT IN ('invalid_email', 'invalid_recipient', 'invalid_data', 'duplicate') "
        f"AND error NOT LIKE '{fields.MISSING}:%') "  # the same data would lack the same fields
        "ORDER BY id"), {"j": job.id}).scalars())
    if not ids:
        return 0

    for start in range(0, len(ids), 5000):
        execute_for_ids(f"UPDATE recipients SET status = '{R_PENDING}', attempts = 0, lease_until = NULL "
                        "WHERE {ids}", ids[start:start + 5000])
    db.session.execute(update(Job).where(Job.id == job.id).values(
        status=PROCESSING, completed_at=None, cancel_requested_at=None, paused_reason=None,
        emails_failed=Job.emails_failed - len(ids)))
    sendstats.record(job.company_id, job.id, {R_FAILED: -len(ids)})
    audit.record("job_retried", company_id=job.company_id, object_type="job", object_id=job.id,
                 details={"recipients": len(ids)})
    db.session.commit()

    enqueue_plan(job.id)
    return len(ids)


def retry_batch_now(job: Job, batch: Batch) -> bool:
    """Bring a backing-off batch's next attempt forward to now; False when it is not waiting."""
    if job.status == PAUSED or job.is_final:
        return False
    res = db.session.execute(update(Batch).where(Batch.id == batch.id, Batch.status.in_(BATCH_WAITING))
                             .values(next_attempt_at=utcnow()))
    if rowcount(res) != 1:
        db.session.rollback()
        return False
    audit.record("batch_retried_now", company_id=job.company_id, object_type="job", object_id=job.id,
                 details={"batch": batch.batch_number})
    db.session.commit()
    plan.run_now(batch, job.source)
    return True


def batches_of(job: Job) -> list[Batch]:
    return list(db.session.execute(Batch.scoped(job.company_id).where(Batch.job_id == job.id)
                                   .order_by(Batch.batch_number)).scalars())


def resume(job: Job) -> bool:
    """Resume a paused job (quota spent, no sender, delivery disabled): its
    waiting batches go back on the queue. False when the job is not paused."""
    if job.status != PAUSED:
        return False
    status = PROCESSING if job.started_at else QUEUED
    db.session.execute(update(Job).where(Job.id == job.id, Job.status == PAUSED)
                       .values(status=status, paused_reason=None, paused_at=None))
    audit.record("job_resumed", company_id=job.company_id, object_type="job", object_id=job.id)
    db.session.commit()

    plan.requeue_open_batches(job.id)
    return True


def resume_reputation(company: Company) -> int | None:
    """Resume a company's bulk sending after the reputation guard paused it (``core.reputation``): the
    guard judges only the sends from now on, and the jobs it paused are resumed. Returns how many;
    ``None`` when the guard was not tripped."""
    if company.reputation_paused_at is None:
        return None
    reason = company.reputation_reason
    moved = rowcount(db.session.execute(update(Company).where(Company.id == company.id,
                                                              Company.reputation_paused_at.is_not(None))
                                        .values(reputation_paused_at=None, reputation_reason=None,
                                                reputation_resumed_at=utcnow())))
    if not moved:
        db.session.rollback()
        return None
    jobs = list(db.session.execute(reputation.paused_by_guard(company.id)).scalars())
    audit.record("reputation_resumed", company_id=company.id, object_type="company", object_id=company.id,
                 details={"reason": reason, "jobs_resumed": len(jobs)})
    db.session.commit()
    return sum(1 for job in jobs if resume(job))
