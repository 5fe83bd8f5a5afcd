"""Jobs in the dashboard: the list (polled by static/jobs.js), a job's detail
with its batches, failed recipients, error log and sends-over-time chart, the
retry and cancel actions, and CSV downloads of its recipients and errors.

Every read goes through ``core.tenancy`` with the user's scope, so
another company's job is a 404 on every page, JSON endpoint and download.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

from flask import abort, jsonify, redirect, request, url_for
from flask_admin import expose
from sqlalchemy import func, select

from core import counts, labels, recipient_list, sendstats, settings, usage, waiting
from core.counts import rates
from core.db import db
from core.delivery.routing import planned_route
from core.jobs import (
    RETRYABLE_STATUSES,
    JobError,
    batches_of,
    iso,
    job_to_dict,
    request_cancel,
    resume,
    retry_batch_now,
    retry_failed,
)
from core.models import (
    B_RETRY,
    BATCH_WAITING,
    CANCELLED,
    COMPLETED,
    FAILED,
    JOB_FINAL,
    JOB_TYPES,
    PARTIAL,
    PAUSED,
    PENDING,
    PROCESSING,
    QUEUED,
    R_BOUNCED,
    R_FAILED,
    R_SUPPRESSED,
    R_UNCERTAIN,
    Batch,
    Company,
    Job,
    Recipient,
    RecipientStatus,
    utcnow,
)
from core.queue import connection
from core.tenancy import get_or_404
from dashboard.admin.base import SecureBaseView, scope
from dashboard.csvexport import csv_response
from dashboard.results import flash_at

PAGE_SIZE = 25
FAILED_PAGE_SIZE = 50
#: the list's status filter, in a job's order of life
JOB_STATUSES = (PENDING, QUEUED, PROCESSING, PAUSED, COMPLETED, PARTIAL, FAILED, CANCELLED)
#: the recipients the detail page lists as not delivered: failed or bounced (``counts.not_delivered``)
NOT_DELIVERED = (R_FAILED, R_BOUNCED)
#: the recipients errors.csv lists: those, and those whose delivery is uncertain after a crash
FAILED_STATUSES = (R_FAILED, R_BOUNCED, R_UNCERTAIN)
BADGES = {PENDING: "secondary", QUEUED: "secondary", PROCESSING: "primary", PAUSED: "info",
          COMPLETED: "success", PARTIAL: "warning", FAILED: "danger", CANCELLED: "dark"}
#: chart bucket sizes (seconds); the smallest that gives at most CHART_BUCKETS bars wins
BUCKET_SIZES = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
CHART_BUCKETS = 60
CSV_COLUMNS = ("id", "email", "status", "error", "attempts", "sent_at", "route", "message_id")


def fmt_time(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(job: Job) -> str:
    """Started to completed (or now, while running), as ``1h 02m 03s``."""
    if job.started_at is None:
        return "—"
    seconds = int(((job.completed_at or utcnow()) - job.started_at).total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress(job: Job) -> dict:
    """Shares of the total (percent) that were sent, failed or bounced, and skipped (``core.counts``)."""
    found = counts.job_counts(job)
    total, sent, failed, skipped, done = found.total, found.sent, found.not_delivered, found.suppressed, found.done
    if job.status in JOB_FINAL or total == 0:
        percent = 100 if job.status in JOB_FINAL else 0
    else:
        percent = math.floor(done * 100 / total)
    share = (lambda n: round(n * 100 / total, 2)) if total else (lambda n: 0)
    attempted = sent + failed
    return {"percent": percent, "done": done, "sent_pct": share(sent), "failed_pct": share(failed),
            "skipped_pct": share(skipped),
            "success_rate": None if not attempted else round(sent * 100 / attempted, 1)}


def source_label(job: Job) -> str:
    label = labels.label("source", job.source)
    messages = (job.options or {}).get("smtp_messages") if job.source == "smtp" else None
    return f"{label} · {messages} message{'s' if messages != 1 else ''}" if messages else label


def job_row(job: Job, company_names: dict[int, str] | None = None, waits: dict[int, dict] | None = None,
            costs: dict | None = None) -> dict:
    """What the list and the detail page show (and poll) for one job (with why it
    waits and its ETA: ``core.waiting``; pass ``waits`` to describe a page in one go, and
    ``costs``, ``core.usage.job_costs``, to price it in one query)."""
    row = job_to_dict(job, costs[job.id] if costs is not None else None)
    row.update((waits if waits is not None else waiting.describe([job]))[job.id])
    row["waiting_text"] = labels.error(row.get("waiting_text"))  # a paused job's reason may name an exception
    row.update(progress=progress(job), duration=fmt_duration(job), badge=BADGES.get(job.status, "secondary"),
               created=fmt_time(job.created_at), started=fmt_time(job.started_at),
               completed=fmt_time(job.completed_at), is_final=job.status in JOB_FINAL,
               can_retry=job.status in RETRYABLE_STATUSES and bool(job.emails_failed),
               can_cancel=job.status not in JOB_FINAL, can_resume=job.status == PAUSED, source_label=source_label(job),
               status_label=labels.label("job_status", job.status), type_label=labels.label("job_type", job.type),
               url=url_for("jobs.details", job_id=job.id))
    if company_names is not None:
        row["company"] = company_names.get(job.company_id, "")
    return row


def waiting_batches(job: Job, batches: list[Batch], company: Company) -> list[dict]:
    """Why each waiting batch waits: its last error, when it is tried next, and the route it will take."""
    waiting = [b for b in batches if b.status in BATCH_WAITING]
    if not waiting:
        return []
    config = company.settings.provider_config() if company.settings else {"enabled": False}
    route = planned_route(config, settings.current().fallback_smtp, connection(), company.id,
                          bool(company.fallback_relay))
    now = utcnow()
    rows = []
    for b in waiting:
        due = b.next_attempt_at
        rows.append({"number": b.batch_number, "id": b.id, "status": b.status, "error": b.error or "—",
                     "next": fmt_time(due) if due else "as soon as a worker is free",
                     "in_s": max(0, int((due - now).total_seconds())) if due else 0, "route": route,
                     "attempts": b.attempts, "can_retry_now": b.status == B_RETRY and job.status != PAUSED})
    return rows


def sends_over_time(job: Job) -> dict:
    """Sent recipients per time bucket, first to last send, empty buckets included (its total is the
    job's sent count once every send is in): from the job's sent recipients per second
    (``core.sendstats``), never its recipient rows."""
    seconds = sendstats.job_seconds(job.id)
    if not seconds:
        return {"bucket_s": 60, "buckets": [], "total": 0}
    span = (seconds[-1].second - seconds[0].second).total_seconds()
    size = next((s for s in BUCKET_SIZES if span / s < CHART_BUCKETS), BUCKET_SIZES[-1])
    epoch = datetime(1970, 1, 1)
    found: dict[int, int] = {}
    for second, sent in seconds:
        key = int((second - epoch).total_seconds()) // size
        found[key] = found.get(key, 0) + sent
    start, end = min(found), max(found)
    buckets = [{"t": iso(epoch + timedelta(seconds=k * size)), "sent": found.get(k, 0)}
               for k in range(start, end + 1)]
    return {"bucket_s": size, "buckets": buckets, "total": sum(found.values())}


def recipient_search(job: Job) -> dict:
    """The job page's recipient search (``?q=`` text in the address, ``?rstatus=``, ``?after=`` the
    keyset cursor): the form's values and one page of recipients (``core.recipient_list``)."""
    args = request.args
    q = args.get("q", "").strip()[:320]
    status = args.get("rstatus", "") if args.get("rstatus", "") in set(RecipientStatus) else ""
    raw_after = args.get("after", "")
    after = int(raw_after) if raw_after.isdigit() and len(raw_after) < 19 else 0
    found = recipient_list.page(job.company_id, job.id, email=q, statuses=(status,) if status else (), after=after)
    return {"q": q, "status": status, "after": after, "page": found, "statuses": tuple(RecipientStatus),
            "active": bool(q or status or after)}


def recipient_rows(company_id: int, job_id: int, statuses: tuple[str, ...] | None = None, chunk: int = 1000):
    """The job's recipients (never ``data``), by id in keyset pages, for streaming."""
    cols = [getattr(Recipient, c) for c in CSV_COLUMNS]
    last = 0
    while True:
        stmt = Recipient.scoped(company_id).with_only_columns(*cols).where(
            Recipient.job_id == job_id, Recipient.id > last)
        if statuses:
            stmt = stmt.where(Recipient.status.in_(statuses))
        rows = db.session.execute(stmt.order_by(Recipient.id).limit(chunk)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


class JobsView(SecureBaseView):
    """The company's jobs (an admin's: every company's, with a company filter)."""

    def _filters(self) -> dict:
        args = request.args
        found = {"status": args.get("status") if args.get("status") in JOB_STATUSES else "",
                 "type": args.get("type") if args.get("type") in JOB_TYPES else "", "company_id": ""}
        if scope() is None and args.get("company_id", "").isdigit():
            found["company_id"] = args["company_id"]
        return found

    def _page_of_jobs(self) -> tuple[list[Job], int, int, dict]:
        filters = self._filters()
        stmt = Job.scoped(scope())
        if filters["status"]:
            stmt = stmt.where(Job.status == filters["status"])
        if filters["type"]:
            stmt = stmt.where(Job.type == filters["type"])
        if filters["company_id"]:
            stmt = stmt.where(Job.company_id == int(filters["company_id"]))
        total = db.session.execute(select(func.count()).select_from(stmt.subquery())).scalar()
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = min(max(request.args.get("page", 1, type=int) or 1, 1), pages)
        jobs = db.session.execute(stmt.order_by(Job.created_at.desc(), Job.id.desc())
                                  .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).scalars().all()
        return jobs, total, page, filters

    @staticmethod
    def _company_names() -> dict[int, str] | None:
        if scope() is not None:
            return None
        return dict(db.session.execute(select(Company.id, Company.name).order_by(Company.name)).all())

    @expose("/")
    def index(self):
        jobs, total, page, filters = self._page_of_jobs()
        names = self._company_names()
        waits, costs = waiting.describe(jobs), usage.job_costs(scope(), [j.id for j in jobs])
        return self.render("admin/jobs/list.html", jobs=[job_row(j, names, waits, costs) for j in jobs], total=total,
                           page=page,
                           pages=max(1, math.ceil(total / PAGE_SIZE)), filters=filters, statuses=JOB_STATUSES,
                           types=JOB_TYPES, companies=names)

    @expose("/data.json")
    def list_data(self):
        jobs, total, page, _ = self._page_of_jobs()
        names = self._company_names()
        waits, costs = waiting.describe(jobs), usage.job_costs(scope(), [j.id for j in jobs])
        return _no_store(jsonify({"jobs": [job_row(j, names, waits, costs) for j in jobs], "total": total,
                                  "page": page,
                                  "per_page": PAGE_SIZE, "now": iso(utcnow())}))

    @expose("/<int:job_id>/")
    def details(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        failed_total = counts.job_counts(job).not_delivered
        pages = max(1, math.ceil(failed_total / FAILED_PAGE_SIZE))
        fpage = min(max(request.args.get("fpage", 1, type=int) or 1, 1), pages)
        failed = db.session.execute(
            Recipient.scoped(job.company_id)
            .with_only_columns(Recipient.id, Recipient.email, Recipient.status, Recipient.error,
                               Recipient.attempts, Recipient.route)
            .where(Recipient.job_id == job.id, Recipient.status.in_(NOT_DELIVERED))
            .order_by(Recipient.id).limit(FAILED_PAGE_SIZE).offset((fpage - 1) * FAILED_PAGE_SIZE)).all()
        suppressed = db.session.execute(  # which suppression list stopped each (the first ones)
            Recipient.scoped(job.company_id).with_only_columns(Recipient.email, Recipient.error)
            .where(Recipient.job_id == job.id, Recipient.status == R_SUPPRESSED)
            .order_by(Recipient.id).limit(FAILED_PAGE_SIZE)).all() if job.emails_suppressed else []
        company = db.session.get(Company, job.company_id)
        batches = batches_of(job)
        search = recipient_search(job)
        return self.render("admin/jobs/details.html", job=job, row=job_row(job), batches=batches, search=search,
                           waiting=waiting_batches(job, batches, company), suppressed=suppressed,
                           failed=failed, failed_total=failed_total, fpage=fpage, fpages=pages,
                           company=company, show_company=scope() is None, fmt_time=fmt_time,
                           rates=rates(job.company_id, job.id))

    @expose("/<int:job_id>/data.json")
    def details_data(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        batches = [{"number": b.batch_number, "status": b.status, "route": b.route, "count": b.recipient_count,
                    "status_label": labels.label("batch_status", b.status), "route_label": labels.route(b.route),
                    "sent": b.sent_count, "failed": b.failed_count, "attempts": b.attempts}
                   for b in batches_of(job)]
        return _no_store(jsonify({**job_row(job), "batches": batches, "rates": rates(job.company_id, job.id)}))

    @expose("/<int:job_id>/chart.json")
    def chart_data(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        return _no_store(jsonify(sends_over_time(job)))

    @expose("/<int:job_id>/recipients.csv")
    def recipients_csv(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        return csv_response(f"job-{job.id}-recipients.csv", list(CSV_COLUMNS),
                            recipient_rows(job.company_id, job.id))

    @expose("/<int:job_id>/errors.csv")
    def errors_csv(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        return csv_response(f"job-{job.id}-errors.csv", list(CSV_COLUMNS),
                            recipient_rows(job.company_id, job.id, FAILED_STATUSES))

    @expose("/<int:job_id>/retry", methods=("POST",))
    def retry(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        try:
            count = retry_failed(job)
        except JobError as exc:
            flash_at("job-actions", exc.message, "error")
        else:
            if count:
                flash_at("job-actions", f"{count} failed recipient(s) queued again.", "success")
            else:
                flash_at("job-actions", "No failed recipient can be retried (invalid addresses and duplicates are "
                         "final).", "info")
        return redirect(url_for("jobs.details", job_id=job_id) + "#job-actions")

    @expose("/<int:job_id>/resume", methods=("POST",))
    def resume(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        if resume(job):
            flash_at("job-actions", "Job resumed: its waiting batches are queued again.", "success")
        else:
            flash_at("job-actions", f"The job is {labels.label('job_status', job.status).lower()}, not paused.", "info")
        return redirect(url_for("jobs.details", job_id=job_id) + "#job-actions")

    @expose("/<int:job_id>/batches/<int:batch_number>/retry-now", methods=("POST",))
    def retry_now(self, job_id: int, batch_number: int):
        job = get_or_404(Job, job_id, scope())
        batch = db.session.execute(Batch.scoped(job.company_id).where(
            Batch.job_id == job.id, Batch.batch_number == batch_number)).scalar_one_or_none()
        if batch is None:
            abort(404)
        if retry_batch_now(job, batch):
            flash_at("waiting", f"Batch {batch_number}: trying again now.", "success")
        else:
            flash_at("waiting", f"Batch {batch_number} is not waiting.", "info")
        return redirect(url_for("jobs.details", job_id=job_id) + "#waiting")

    @expose("/<int:job_id>/cancel", methods=("POST",))
    def cancel(self, job_id: int):
        job = get_or_404(Job, job_id, scope())
        if request_cancel(job):
            flash_at("job-actions", "Cancel requested: recipients not yet sent will be cancelled.", "success")
        else:
            flash_at("job-actions", f"The job is already {labels.label('job_status', job.status).lower()}.", "info")
        return redirect(url_for("jobs.details", job_id=job_id) + "#job-actions")


def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


def register(admin) -> None:
    admin.add_view(JobsView(name="Jobs", endpoint="jobs", url="/admin/jobs"))
