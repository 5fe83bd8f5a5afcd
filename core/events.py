"""The LMS events buffer behind ``POST /api/v1/events`` (CONTRACT §3).

Events of one company and job type collect in a Redis list while their
window is open. The first event of a window opens it and schedules a
closer (``tasks.events.close_window``) at its end; every later event moves
the end (the window slides) up to ``max_hold_s`` after it opened. When the
closer finds the window due it atomically renames the list away, and the
events become one bulk job (more than the threshold) or one job each.

Why nothing is lost or sent twice, with any number of web processes and
workers:
* an event is pushed in one MULTI/EXEC with the ``SET NX`` of the window
  id, so it belongs to exactly the window whose id is set after that
  transaction, and exactly one event per window sees the id created;
* a window is closed by one MULTI/EXEC (``RENAME`` of its list, ``DEL`` of
  its id) guarded by ``WATCH`` on the id, so only one closer takes it and
  an event pushed after the rename starts a new list and a new window;
* jobs are created with idempotency keys derived from the window id, so a
  closer that runs again (RQ retry, the recovery sweep) finds the jobs the
  first run made instead of making new ones; the taken list is deleted
  only after its jobs exist.

No Lua: the embedded demo Redis (fakeredis without lupa) cannot run it.
Events are stored encrypted (they may carry passwords) and deleted as
soon as they are jobs; RQ arguments are company id, job type and window id.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

from redis import Redis, WatchError

from core import audit, crypto
from core.db import db
from core.jobs import JobError, compile_checked, create_job, parse_time
from core.models import Company, Job, Template
from core.rendering import valid_email
from core.queue import schedule_close

log = logging.getLogger(__name__)

#: LMS event → job type (CONTRACT §3)
EVENT_TYPES = {
    "user_created": "csv_import",
    "license_allocated": "license_allocation",
    "reengagement_campaign_triggered": "reengagement",
    "course_completed": "certificate",
}
PREFIX = "offload:events:"
OPEN = PREFIX + "open"        # zset "<company>:<type>" → ms its window opened
CLOSED = PREFIX + "closed"    # zset "<company>:<type>:<window>" → ms it was taken, until its jobs exist
MAX_DATA_BYTES = 64 * 1024


class EventError(ValueError):
    """The event cannot be accepted; ``code``, ``message`` and ``details`` go into the 400."""

    def __init__(self, code: str, message: str, details=None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


@dataclass(frozen=True)
class Event:
    event: str
    job_type: str
    email: str
    data: dict
    occurred_at: str | None


@dataclass(frozen=True)
class Accepted:
    """What ``accept`` did: the event is number ``count`` of window ``window_id``."""

    window_id: str
    count: int
    mode: str  # bulk | single (single may still become bulk while the window is open)


@dataclass(frozen=True)
class WindowState:
    window_id: str | None
    opened_ms: int | None
    last_ms: int | None

    def due_at(self, window_s: float, max_hold_s: float) -> float:
        """Unix time the window closes: ``window_s`` after its last event, at most
        ``max_hold_s`` after it opened."""
        now_ms = time.time() * 1000
        last = self.last_ms or self.opened_ms or now_ms
        opened = self.opened_ms or last
        return min(last + window_s * 1000, opened + max_hold_s * 1000) / 1000


# -- keys ---------------------------------------------------------------------
def _member(company_id: int, job_type: str) -> str:
    return f"{company_id}:{job_type}"


def buf_key(company_id: int, job_type: str) -> str:
    return f"{PREFIX}buf:{_member(company_id, job_type)}"


def win_key(company_id: int, job_type: str) -> str:
    return f"{PREFIX}win:{_member(company_id, job_type)}"


def last_key(company_id: int, job_type: str) -> str:
    return f"{PREFIX}last:{_member(company_id, job_type)}"


def taken_key(window_id: str) -> str:
    return f"{PREFIX}taken:{window_id}"


# -- accepting ------------------------------------------------------------------
def parse_event(payload) -> Event:
    """Check an event body's shape; raise ``EventError`` with the reason."""
    if not isinstance(payload, dict):
        raise EventError("invalid_json", "the body must be a JSON object")
    name = payload.get("event")
    if name not in EVENT_TYPES:
        shown = name[:100] if isinstance(name, str) else None
        raise EventError("unknown_event", f"event must be one of {', '.join(EVENT_TYPES)}", {"event": shown})
    email = payload.get("email")
    if not isinstance(email, str) or not valid_email(email.strip()):
        raise EventError("invalid_email", "email is not a valid address")
    data = payload.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EventError("invalid_data", "data must be a JSON object")
    if len(json.dumps(data, separators=(",", ":"))) > MAX_DATA_BYTES:
        raise EventError("data_too_large", f"data may hold at most {MAX_DATA_BYTES} bytes of JSON")
    occurred = payload.get("occurred_at")
    try:
        moment = parse_time(occurred, "occurred_at")
    except JobError as exc:
        raise EventError(exc.code, exc.message) from None
    return Event(name, EVENT_TYPES[name], email.strip(), data,
                 None if moment is None else moment.isoformat() + "Z")


def template_for(company_id: int, job_type: str) -> Template | None:
    """The company's stored template for ``job_type`` (the latest edited one)."""
    return db.session.execute(
        Template.scoped(company_id).where(Template.job_type == job_type)
        .order_by(Template.updated_at.desc(), Template.id.desc()).limit(1)).scalar_one_or_none()


def check_template(company_id: int, event: Event) -> Template:
    """The template the event will be sent with; it must exist and render the event's data."""
    tpl = template_for(company_id, event.job_type)
    if tpl is None:
        raise EventError("no_template", f"no template for {event.job_type}",
                         {"job_type": event.job_type})
    try:
        compile_checked(tpl.subject, tpl.body_text, tpl.body_html, event.data, event.job_type)
    except JobError as exc:
        raise EventError(exc.code, exc.message, exc.details) from None
    return tpl


#: events one company may hold in its open windows (Redis runs ``noeviction``)
MAX_BUFFERED_PER_COMPANY = 50_000


def accept(conn: Redis, company_id: int, event: Event, *, threshold: int, window_s: float,
           max_buffered: int = MAX_BUFFERED_PER_COMPANY) -> Accepted:
    """Add the event to its open window (opening one if needed) in one transaction.

    Raises ``EventError`` (``too_many_events``) when the company already holds
    ``max_buffered`` events in that window."""
    if conn.llen(buf_key(company_id, event.job_type)) >= max_buffered:
        raise EventError("too_many_events", f"the company already has {max_buffered} events waiting in this "
                                            "window; retry after it closes")
    token = crypto.encrypt(json.dumps({"email": event.email, "data": event.data, "event": event.event,
                                       "occurred_at": event.occurred_at}, separators=(",", ":")))
    new_id = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    win = win_key(company_id, event.job_type)
    pipe = conn.pipeline(transaction=True)
    pipe.rpush(buf_key(company_id, event.job_type), token)
    pipe.set(win, new_id, nx=True)
    pipe.get(win)
    pipe.set(last_key(company_id, event.job_type), now_ms)
    pipe.zadd(OPEN, {_member(company_id, event.job_type): now_ms}, nx=True)
    count, created, window_id, _, _ = pipe.execute()
    window_id = window_id.decode()
    if created:
        schedule_close(company_id, event.job_type, window_id, window_s)
    return Accepted(window_id, count, "bulk" if count > threshold else "single")


# -- closing --------------------------------------------------------------------
def window_state(conn: Redis, company_id: int, job_type: str) -> WindowState:
    pipe = conn.pipeline(transaction=True)
    pipe.get(win_key(company_id, job_type))
    pipe.zscore(OPEN, _member(company_id, job_type))
    pipe.get(last_key(company_id, job_type))
    wid, opened, last = pipe.execute()
    return WindowState(wid.decode() if wid else None, int(opened) if opened is not None else None,
                       int(last) if last is not None else None)


def take_window(conn: Redis, company_id: int, job_type: str, window_id: str) -> bool:
    """Close the window if it is still open: its events move to ``taken:<window>``.

    True when this call took it; False when it was already taken.
    """
    win, member = win_key(company_id, job_type), _member(company_id, job_type)
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(win)
                current = pipe.get(win)
                if current is None or current.decode() != window_id:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.zadd(CLOSED, {f"{member}:{window_id}": int(time.time() * 1000)})
                pipe.rename(buf_key(company_id, job_type), taken_key(window_id))
                pipe.delete(win, last_key(company_id, job_type))
                pipe.zrem(OPEN, member)
                results = pipe.execute(raise_on_error=False)
            except WatchError:  # another closer changed the id meanwhile: look again
                continue
            if isinstance(results[1], Exception):  # no list: its events were lost with Redis data
                log.warning("Window %s: no events list to take (%s)", window_id, results[1])
            return True


def taken_events(conn: Redis, window_id: str) -> list[dict]:
    """The decrypted events of a taken window, in arrival order."""
    return [json.loads(crypto.decrypt(t.decode())) for t in conn.lrange(taken_key(window_id), 0, -1)]


def forget_taken(conn: Redis, company_id: int, job_type: str, window_id: str) -> None:
    """Delete a taken window's events once their jobs exist."""
    pipe = conn.pipeline(transaction=True)
    pipe.delete(taken_key(window_id))
    pipe.zrem(CLOSED, f"{_member(company_id, job_type)}:{window_id}")
    pipe.execute()


def make_jobs(company_id: int, job_type: str, window_id: str, events: list[dict], *, threshold: int,
              max_recipients: int) -> list[tuple[Job, bool]]:
    """One bulk job (more than ``threshold`` events) or one job per event.

    Idempotency keys derive from the window id: running this again for the
    same window returns the jobs already made.
    """
    if not events:
        return []
    if db.session.get(Company, company_id) is None:
        log.warning("Window %s: company %s is gone; %s events dropped", window_id, company_id, len(events))
        return []
    tpl = template_for(company_id, job_type)
    if tpl is None:
        _dropped(company_id, job_type, window_id, len(events), "no_template")
        return []
    recipients = [{"email": e["email"], "data": e.get("data") or {}} for e in events]
    if len(recipients) > threshold:
        chunks = [recipients[i:i + max_recipients] for i in range(0, len(recipients), max_recipients)]
        keys = [f"events:{window_id}" if len(chunks) == 1 else f"events:{window_id}:part{n}"
                for n in range(len(chunks))]
    else:
        chunks = [[r] for r in recipients]
        keys = [f"events:{window_id}:{n}" for n in range(len(chunks))]
    made = []
    for key, chunk in zip(keys, chunks, strict=True):
        try:
            made.append(create_job(company_id, {"type": job_type, "template": tpl.name, "recipients": chunk},
                                   idempotency_key=key, source="event", max_recipients=max_recipients))
        except JobError as exc:
            db.session.rollback()
            _dropped(company_id, job_type, window_id, len(chunk), exc.code)
    return made


def _dropped(company_id: int, job_type: str, window_id: str, count: int, reason: str) -> None:
    """Events that cannot become a job (template deleted or broken since they were accepted)."""
    log.error("Window %s: %s %s events of company %s dropped: %s", window_id, count, job_type, company_id, reason)
    audit.record("events_dropped", company_id=company_id, object_type="events", object_id=window_id,
                 details={"type": job_type, "events": count, "reason": reason})
    db.session.commit()


def open_windows(conn: Redis, older_than_ms: int | None = None) -> list[tuple[int, str, int]]:
    """(company id, job type, opened ms) of open windows, oldest first."""
    top = "+inf" if older_than_ms is None else older_than_ms
    found = []
    for member, score in conn.zrangebyscore(OPEN, "-inf", top, withscores=True):
        company, _, jtype = member.decode().partition(":")
        found.append((int(company), jtype, int(score)))
    return found


def closed_windows(conn: Redis, older_than_ms: int) -> list[tuple[int, str, str]]:
    """(company id, job type, window id) of taken windows whose jobs are not made yet."""
    found = []
    for member in conn.zrangebyscore(CLOSED, "-inf", older_than_ms):
        company, jtype, wid = member.decode().split(":", 2)
        found.append((int(company), jtype, wid))
    return found


def jobs_of_window(company_id: int, window_id: str) -> list[Job]:
    """The jobs made from a window (for tests and support)."""
    return list(db.session.execute(
        Job.scoped(company_id).where(Job.idempotency_key.like(f"events:{window_id}%")).order_by(Job.id)).scalars())

