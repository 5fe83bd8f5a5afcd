"""Why a job is waiting, and when it should be done (the dashboard's job list and detail).

- ``paused``: the job is paused (its reason is shown);
- ``scheduled``: its ``send_at`` is still ahead;
- ``rate``: its company's shared send rate has no tokens now, or its batches
  wait for them (``core.delivery.send.BatchRun.defer``);
- ``backoff``: its batches back off after errors (next try at ``next_attempt_at``);
- ``worker``: its batches are runnable and wait for a worker (others go first:
  transactional before bulk, fair shares between companies);
- ``None``: it is being sent now, or it is final.

The ETA is recipients left ÷ the rate the job gets: what it sent in the last
``WINDOW_S`` seconds, else its company's ``max_send_rate`` (no figure when
neither is known).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from redis import RedisError
from sqlalchemy import bindparam, func, select, text

from core import scheduler
from core.counts import job_counts
from core.db import db
from core.models import (B_PENDING, B_QUEUED, B_RETRY, B_SENDING, B_SUBMITTED, BATCH_OPEN, JOB_FINAL, PAUSED, R_SENT,
                         Batch, DeliverySettings, Job, utcnow)
from core.queue import connection

WINDOW_S = 30
TEXTS = {"paused": "paused", "scheduled": "scheduled", "rate": "waiting for its send rate",
         "backoff": "backing off after errors", "worker": "waiting for a worker"}


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"~{max(seconds, 1)}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"~{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"~{hours}h {minutes:02d}m"


def describe(jobs: list[Job]) -> dict[int, dict]:
    """``{job id: {"waiting", "waiting_text", "rate", "eta_s", "eta"}}`` for the jobs given."""
    out = {j.id: {"waiting": None, "waiting_text": "", "rate": None, "eta_s": None, "eta": "—"} for j in jobs}
    live = [j for j in jobs if j.status not in JOB_FINAL]
    if not live:
        return out
    now = utcnow()
    ids = [j.id for j in live]
    states: dict[int, dict[str, tuple[int, object]]] = defaultdict(dict)
    for row in db.session.execute(
            select(Batch.job_id, Batch.status, func.count().label("n"), func.min(Batch.next_attempt_at).label("at"))
            .where(Batch.job_id.in_(ids), Batch.status.in_(BATCH_OPEN)).group_by(Batch.job_id, Batch.status)):
        states[row.job_id][row.status] = (row.n, row.at)
    recent = dict(db.session.execute(text(
        f"SELECT job_id, count(*) FROM recipients WHERE job_id IN :ids AND status = '{R_SENT}' AND sent_at >= :since "
        "GROUP BY job_id").bindparams(bindparam("ids", expanding=True)),
        {"ids": ids, "since": now - timedelta(seconds=WINDOW_S)}).all())
    companies = {j.company_id for j in live}
    limits = dict(db.session.execute(select(DeliverySettings.company_id, DeliverySettings.max_send_rate)
                                     .where(DeliverySettings.company_id.in_(companies))).all())
    blocked = _blocked(companies)
    for job in live:
        info = out[job.id]
        since = max(job.started_at or now, now - timedelta(seconds=WINDOW_S))
        span = max((now - since).total_seconds(), 1.0)
        rate = recent.get(job.id, 0) / span if recent.get(job.id) else limits.get(job.company_id)
        left = job_counts(job).left
        info["rate"] = round(rate, 1) if rate else None
        if rate and left:
            info["eta_s"] = left / rate
            info["eta"] = fmt_eta(info["eta_s"])
        info["waiting"] = _reason(job, states.get(job.id, {}), job.company_id in blocked, now)
        if info["waiting"]:
            info["waiting_text"] = TEXTS[info["waiting"]]
            if info["waiting"] == "paused" and job.paused_reason:
                info["waiting_text"] += f": {job.paused_reason}"
    return out


def _reason(job: Job, states: dict, blocked: bool, now) -> str | None:
    if job.status == PAUSED:
        return "paused"
    if job.send_at and job.send_at > now and not states:
        return "scheduled"
    if B_SENDING in states or B_SUBMITTED in states:
        return "rate" if blocked else None
    queued_n, queued_at = states.get(B_QUEUED, (0, None))
    retry_n, retry_at = states.get(B_RETRY, (0, None))
    if queued_n and (blocked or (queued_at is not None and queued_at > now)):
        return "rate"
    if queued_n or states.get(B_PENDING):
        return "worker"
    if retry_n:
        return "backoff" if retry_at is not None and retry_at > now else "worker"
    return "worker"  # queued and not yet planned


def _blocked(companies: set[int]) -> set[int]:
    """Companies whose shared rate has no tokens now (Redis trouble: none known)."""
    try:
        conn = connection()
        return {c for c in companies if scheduler.blocked_until(conn, c) is not None}
    except (RedisError, OSError):
        return set()
