"""The jobs API (CONTRACT §3): create, list, read, retry, cancel and resume jobs."""
from __future__ import annotations

from flask import abort, g, jsonify, make_response, request
from sqlalchemy import func, select

from core import settings, usage
from core.db import db
from core.jobs import JobError, create_job, iso, job_to_dict, request_cancel, resume, retry_failed
from core.models import JOB_TYPES, Job, JobStatus, Recipient, RecipientStatus
from core.queue import enqueue_job
from core.tenancy import get_or_404
from dashboard.api.base import bp, token_required
from dashboard.errors import json_error

PAGE_SIZE = 50
RECIPIENT_STATUSES = tuple(RecipientStatus)
JOB_STATUSES = tuple(JobStatus)


@bp.post("/jobs")
@token_required
def create():
    payload = request.get_json(silent=True)
    if payload is None:
        return json_error(400, "invalid_json", "the body must be JSON (Content-Type: application/json)")
    try:
        job, created = create_job(g.company_id, payload, idempotency_key=request.headers.get("Idempotency-Key"),
                                  max_recipients=settings.current().max_recipients)
    except JobError as exc:
        return json_error(400, exc.code, exc.message, exc.details)
    if created:
        enqueue_job(job)
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return jsonify(job_to_dict(job)), 202, headers


@bp.get("/jobs/<int:job_id>")
@token_required
def get_job(job_id: int):
    return jsonify(job_to_dict(get_or_404(Job, job_id, g.company_id)))


@bp.get("/jobs")
@token_required
def list_jobs():
    stmt = Job.scoped(g.company_id)
    status, jtype = request.args.get("status"), request.args.get("type")
    if status:
        if status not in JOB_STATUSES:
            return json_error(400, "invalid_status", f"status must be one of {', '.join(JOB_STATUSES)}")
        stmt = stmt.where(Job.status == status)
    if jtype:
        if jtype not in JOB_TYPES:
            return json_error(400, "invalid_type", f"type must be one of {', '.join(JOB_TYPES)}")
        stmt = stmt.where(Job.type == jtype)
    page = _page()
    total = db.session.execute(select(func.count()).select_from(stmt.subquery())).scalar()
    jobs = db.session.execute(stmt.order_by(Job.created_at.desc(), Job.id.desc())
                              .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).scalars().all()
    costs = usage.job_costs(g.company_id, [j.id for j in jobs])  # one query for the page
    return jsonify({"jobs": [job_to_dict(j, costs[j.id]) for j in jobs], "page": page, "per_page": PAGE_SIZE,
                    "total": total})


@bp.get("/jobs/<int:job_id>/recipients")
@token_required
def list_recipients(job_id: int):
    job = get_or_404(Job, job_id, g.company_id)
    status = request.args.get("status")
    if status and status not in RECIPIENT_STATUSES:
        return json_error(400, "invalid_status", f"status must be one of {', '.join(RECIPIENT_STATUSES)}")
    cols = (Recipient.id, Recipient.email, Recipient.status, Recipient.error, Recipient.sent_at)
    stmt = select(*cols).where(Recipient.company_id == g.company_id, Recipient.job_id == job.id)
    if status:
        stmt = stmt.where(Recipient.status == status)
    page, per_page = _page(), 500
    rows = db.session.execute(stmt.order_by(Recipient.id).limit(per_page).offset((page - 1) * per_page)).all()
    return jsonify({"recipients": [{"id": r.id, "email": r.email, "status": r.status, "error": r.error,
                                    "sent_at": iso(r.sent_at)} for r in rows],
                    "page": page, "per_page": per_page})


@bp.post("/jobs/<int:job_id>/retry")
@token_required
def retry(job_id: int):
    job = get_or_404(Job, job_id, g.company_id)
    try:
        count = retry_failed(job)
    except JobError as exc:
        return json_error(409, exc.code, exc.message)
    db.session.refresh(job)
    return jsonify({**job_to_dict(job), "retried": count}), 202


@bp.post("/jobs/<int:job_id>/cancel")
@token_required
def cancel(job_id: int):
    job = get_or_404(Job, job_id, g.company_id)
    if not request_cancel(job):
        return json_error(409, "job_final", f"the job is already {job.status}")
    db.session.refresh(job)
    return jsonify(job_to_dict(job)), 202


@bp.post("/jobs/<int:job_id>/resume")
@token_required
def resume_job(job_id: int):
    """Resume a paused job (an addition to CONTRACT §3)."""
    job = get_or_404(Job, job_id, g.company_id)
    if not resume(job):
        return json_error(409, "job_not_paused", f"the job is {job.status}, not paused")
    db.session.refresh(job)
    return jsonify(job_to_dict(job)), 202


#: the last page a list may ask for (a larger offset than any table holds; PostgreSQL refuses past bigint)
MAX_PAGE = 1_000_000


def _page() -> int:
    raw = request.args.get("page", "1")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7) or not 1 <= int(raw) <= MAX_PAGE:
        abort(make_response(*json_error(400, "invalid_page", f"page must be a whole number from 1 to {MAX_PAGE}")))
    return int(raw)
