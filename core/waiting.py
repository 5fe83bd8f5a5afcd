"""Why a job is waiting, and when it should be done (the dashboard's job list and detail).

- ``paused``: the job is paused (its reason is shown);
- ``scheduled``: its ``send_at`` is still ahead: it starts then (``starts_at``);
- ``circuit``: its company's provider is unavailable (the circuit is open after connection
  failures) and it has no SMTP fallback: its batches wait for the circuit to close;
- ``rate``: its company's shared send rate has no tokens now, or its batches
  wait for them (``core.delivery.send.BatchRun.defer``);
- ``backoff``: its batches back off after errors (next try at ``next_attempt_at``);
- ``worker``: its batches are runnable and wait for a worker (others go first:
  transactional before bulk, fair shares between companies);
- ``None``: it is being sent now, or it is final.

The ETA comes from the rate, the backlog and the state: recipients left (``core.counts``) ÷ the
rate the job gets (what it sent in the last ``WINDOW_S`` seconds, else its company's
``max_send_rate``), after the next attempt when its batches back off; no figure when neither
rate is known. A job that cannot move by itself (paused, scheduled, circuit open) has no ETA
but ``waiting: <reason>`` (a scheduled one: ``waiting: starts at`` its ``starts_at``).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from redis import RedisError
from sqlalchemy import func, select

from core import scheduler, sendstats, settings
from core.counts import job_counts
from core.db import db
from core.delivery import routing
from core.delivery.limits import breaker_is_open
from core.models import (
    B_PENDING,
    B_QUEUED,
    B_RETRY,
    B_SENDING,
    B_SUBMITTED,
    BATCH_OPEN,
    JOB_FINAL,
    PAUSED,
    Batch,
    Company,
    DeliverySettings,
    Job,
    utcnow,
)
from core.queue import connection

WINDOW_S = 30
TEXTS = {"paused": "paused", "scheduled": "scheduled, starts at",
         "circuit": "the provider is unavailable (circuit open) and there is no fallback",
         "rate": "waiting for its send rate", "backoff": "backing off after errors", "worker": "waiting for a worker"}
#: reasons a job cannot move by itself: no ETA, ``waiting: <reason>``
STOPPED = {"paused": "paused", "scheduled": "starts at", "circuit": "the provider is unavailable (circuit open)"}


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
    """``{job id: {"waiting", "waiting_text", "rate", "eta_s", "eta", "starts_at", "starts_at_utc"}}``."""
    out: dict[int, dict[str, Any]] = {
        j.id: {"waiting": None, "waiting_text": "", "rate": None, "eta_s": None, "eta": "—", "starts_at": None,
               "starts_at_utc": ""} for j in jobs}
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
    recent = sendstats.sent_since(ids, now - timedelta(seconds=WINDOW_S))
    companies = {j.company_id for j in live}
    limits = dict(db.session.execute(select(DeliverySettings.company_id, DeliverySettings.max_send_rate)
                                     .where(DeliverySettings.company_id.in_(companies))).all())
    blocked, down = _blocked(companies), _circuit_open(companies)
    for job in live:
        info = out[job.id]
        since = max(job.started_at or now, now - timedelta(seconds=WINDOW_S))
        span = max((now - since).total_seconds(), 1.0)
        rate = recent.get(job.id, 0) / span if recent.get(job.id) else limits.get(job.company_id)
        left = job_counts(job).left
        info["rate"] = round(rate, 1) if rate else None
        job_states = states.get(job.id, {})
        info["waiting"] = _reason(job, job_states, job.company_id in blocked, job.company_id in down, now)
        if info["waiting"]:
            info["waiting_text"] = TEXTS[info["waiting"]]
            if info["waiting"] == "paused" and job.paused_reason:
                info["waiting_text"] += f": {job.paused_reason}"
        if info["waiting"] == "scheduled" and job.send_at is not None:
            info["starts_at"] = job.send_at.replace(microsecond=0).isoformat() + "Z"
            info["starts_at_utc"] = job.send_at.strftime("%Y-%m-%d %H:%M UTC")
        if info["waiting"] in STOPPED:
            info["eta"] = f"waiting: {STOPPED[info['waiting']]}"
        elif rate and left:
            info["eta_s"] = left / rate + _backing_off(job_states, info["waiting"], now)
            info["eta"] = fmt_eta(info["eta_s"])
    return out


def _backing_off(states: dict, waiting: str | None, now) -> float:
    """Seconds until the next attempt of a job whose batches back off (else 0)."""
    if waiting != "backoff":
        return 0.0
    _, at = states.get(B_RETRY, (0, None))
    return max(0.0, (at - now).total_seconds()) if at is not None else 0.0


def _reason(job: Job, states: dict, blocked: bool, down: bool, now) -> str | None:
    if job.status == PAUSED:
        return "paused"
    if job.send_at and job.send_at > now and not states:
        return "scheduled"
    if B_SENDING in states or B_SUBMITTED in states:
        return "rate" if blocked else None
    if down and (B_QUEUED in states or B_RETRY in states or B_PENDING in states):
        return "circuit"
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


def _circuit_open(companies: set[int]) -> set[int]:
    """Companies whose provider's circuit is open and that have no SMTP fallback: their batches
    wait for it to close (``core.delivery.send.BatchRun.run``). Redis trouble: none known."""
    rows = db.session.execute(select(Company).where(Company.id.in_(companies))).scalars().all()
    fallback = settings.current().fallback_smtp
    try:
        conn = connection()
        found = set()
        for company in rows:
            config = company.settings.provider_config() if company.settings else {"enabled": False}
            route = routing.primary_route(config)
            if route is None or route.kind != "direct" or not breaker_is_open(conn, company.id, route.provider):
                continue
            if routing.fallback_route(config, fallback, bool(company.fallback_relay)) is None:
                found.add(company.id)
        return found
    except (RedisError, OSError):
        return set()
