"""The LMS events behind ``POST /api/v1/events`` (CONTRACT §3): accepted durably, grouped into windows.

An event is checked in the request (its shape, the token, the company's
template for its type and the fields that template needs: no render, no
database round trip once the token and the template are known to the
process) and handed to the process's writer (``core.groupcommit``), which
stores every event that arrived meanwhile in one transaction
(``waiting_events``, the payload encrypted) and only then lets each request
answer ``202``. What a ``202`` acknowledged is in the database: a web
process, a worker or Redis killed after it loses nothing.

Stored events of one company and job type wait in their window, as SMTP
submissions do: ``OFFLOAD_BULK_WINDOW_S`` after the latest, at most
``OFFLOAD_BULK_MAX_HOLD_S`` after the first. The writer asks Redis for the
window's closer (once per window across processes: ``Closers``) and counts
the window's events there, which gives the ``202`` its ``mode`` (more than
``OFFLOAD_BULK_THRESHOLD``: ``bulk``; ``single`` may still become bulk
while the window is open). ``close_window`` (a worker, when the window is
due; the recovery sweep for a window whose closer was lost) turns the
events into one bulk job or one job each, deleting them in the transaction
that creates their job, by a conditional delete: two closers never make two
jobs of one event, and a closer that dies leaves the events for the next.

The token is checked again when its events are stored (a token revoked a
moment ago gets a ``401``, nothing stored); a template is re-read by each
process at most every ``TEMPLATE_TTL_S``, and the job is always made with
the template as it is when its window closes.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from redis import Redis, RedisError
from sqlalchemy import Engine, func, select, text

from core import api_rate, audit, crypto, fields, settings
from core.companies import authenticate_token
from core.db import db, rowcount
from core.groupcommit import GroupCommit, NotStored, autocommit_cursor
from core.jobs import JobError, create_job, create_jobs, parse_time, service_sample
from core.models import Company, Template, WaitingEvent, is_bulk, sha256_hex, utcnow
from core.queue import as_text, connection, release_events_closer
from core.rendering import PREVIEW_BUDGET_S, CompiledTemplate, RenderError, valid_email
from core.submissions import Closers, Pass, close_due, connection_lost, due_at

log = logging.getLogger(__name__)

#: LMS event → job type (CONTRACT §3)
EVENT_TYPES = {
    "user_created": "csv_import",
    "license_allocated": "license_allocation",
    "reengagement_campaign_triggered": "reengagement",
    "course_completed": "certificate",
}
PREFIX = "offload:events:"
MAX_DATA_BYTES = 64 * 1024
#: events one company may hold in an open window (then ``429``)
MAX_BUFFERED_PER_COMPANY = 50_000
#: the most events one close takes (a bigger window is closed again at once for the rest)
CLOSE_LIMIT = 50_000
#: how long a process trusts what it read of a token (the writer checks it again) and of a template
TOKEN_TTL_S = 60.0
TEMPLATE_TTL_S = 2.0
#: a token whose count this process read less than ``RATE_FRESH_S`` ago, in the same minute, and that stays under
#: ``RATE_HEADROOM`` of its limit with its group's requests, is counted after the store (one Redis round trip a
#: group for both counts); near its limit each group is counted before it is stored. Other processes count too:
#: the limit may be passed by what they let through in that second, never by more than their own headroom
RATE_FRESH_S = 1.0
RATE_HEADROOM = 0.5
#: how often the writer records a token's last use
LAST_USED_EVERY_S = 60.0


class EventError(ValueError):
    """The event cannot be accepted; ``code``, ``message`` and ``details`` go into the 4xx."""

    def __init__(self, code: str, message: str, details=None, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.details, self.status = code, message, details, status


class Unauthorized(EventError):
    def __init__(self):
        super().__init__("unauthorized", "a valid bearer token is required", status=401)


class RateLimited(EventError):
    """The token made more than ``OFFLOAD_API_RATE_PER_MIN`` requests this minute (counted by the writer)."""

    def __init__(self, limit: int, retry_after: int):
        super().__init__("rate_limited", f"more than {limit} requests this minute with this token; "
                                         f"retry in {retry_after} s", status=429)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Event:
    event: str
    job_type: str
    email: str
    data: dict
    occurred_at: str | None


@dataclass(frozen=True)
class Accepted:
    """What ``accept`` did: the event is number ``count`` of its window (0: Redis did not say)."""

    count: int
    mode: str  # bulk | single (single may still become bulk while the window is open)


# -- the event's shape --------------------------------------------------------------
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
    encoded = json.dumps(data, separators=(",", ":"))
    if len(encoded) > MAX_DATA_BYTES:
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


@dataclass
class _TemplateCheck:
    """What a process knows of a company's template for a type: compiled once, sample-rendered once."""

    key: tuple | None  # (id, updated_at, parts); None: no template
    compiled: CompiledTemplate | None
    read_at: float
    parts: tuple[str, str | None, str | None] | None = None
    #: the first render's error for a template that failed it (each later event renders to be sure)
    broken: bool = False
    rendered_once: bool = False


def _missing(compiled: CompiledTemplate, job_type: str, data: dict) -> list[str]:
    """What the event's data lacks for its mail (``core.fields``: the template's variables, the type's fields)."""
    return fields.missing(job_type, compiled.required, data, bulk=is_bulk(job_type, None))


def _sample_render(tpl_parts: tuple[str, str | None, str | None], job_type: str, data: dict) -> None:
    """Render the template with this event's data once (errors a 400 now); raises ``EventError``."""
    sample = {**service_sample(job_type, is_bulk(job_type, None)), **data}
    try:
        CompiledTemplate.checked(*tpl_parts, sample, PREVIEW_BUDGET_S)
    except RenderError as exc:
        raise EventError("template_error", str(exc), {"part": exc.part}) from None


# -- accepting --------------------------------------------------------------------------
@dataclass
class _Pending:
    """One event on its way to the writer."""

    token_hash: str
    company_id: int
    job_type: str
    payload: str  # the encrypted payload
    #: the writer counts the request against its token's rate limit (the request did not ask Redis itself)
    count: bool = False


@dataclass
class Intake:
    """One web app's acceptance of events: its writer, and what its processes know of tokens,
    templates and windows."""

    engine: Engine
    writer: GroupCommit = field(init=False)
    _tokens: dict = field(default_factory=dict)
    _templates: dict = field(default_factory=dict)
    _counts: dict = field(default_factory=dict)
    _used: dict = field(default_factory=dict)
    #: per token hash: (rate window, its count, when read) as this process last saw it in Redis
    _rates: dict = field(default_factory=dict)
    #: requests let through by ``_before`` without asking Redis: counted by ``_after``
    _uncounted: Counter = field(default_factory=Counter)
    _closers: Closers = field(default_factory=Closers)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        # SQLite has one writer at a time: a second thread would only wait for its lock
        self.writer = GroupCommit(self.engine, self._store, name="events-writer", before=self._before,
                                  after=self._after, writers=2 if self.engine.dialect.name == "postgresql" else 1)

    # the request's side
    def accept(self, token: str, payload, *, count: bool = False) -> Accepted:
        """Check the event and store it; ``Accepted`` once committed. Raises ``EventError``
        (``Unauthorized`` for a token that is not live, ``RateLimited``), ``StoreFailed`` when the database
        did not take it. ``count``: the writer counts the request against the token's rate limit, with the
        other requests of its group in one round trip (the caller has not counted it)."""
        return self.writer.submit(self.prepare(token, payload, count=count))

    def knows(self, token: str) -> bool:
        """The process read this token as live less than ``TOKEN_TTL_S`` ago (the writer checks it again)."""
        known = self._tokens.get(sha256_hex(token)) if 0 < len(token) <= 200 else None
        return known is not None and known[1] > time.monotonic()

    def prepare(self, token: str, payload, *, count: bool = False) -> _Pending:
        """Check the event (``EventError``), encrypt it: what ``writer.submit`` stores."""
        token_hash, company_id = self.authenticate(token)
        event = parse_event(payload)
        self._check_template(company_id, event)
        cfg = settings.current()
        if self._counts.get((company_id, event.job_type), 0) >= cfg.max_buffered_events:
            raise EventError("too_many_events", f"the company already has {cfg.max_buffered_events} events waiting "
                                                "in this window; retry after it closes", status=429)
        body = json.dumps({"email": event.email, "data": event.data, "event": event.event,
                           "occurred_at": event.occurred_at}, separators=(",", ":"))
        return _Pending(token_hash, company_id, event.job_type, crypto.encrypt(body), count)

    def authenticate(self, token: str) -> tuple[str, int]:
        if not token or len(token) > 200:
            raise Unauthorized()
        token_hash = sha256_hex(token)
        known = self._tokens.get(token_hash)
        now = time.monotonic()
        if known is not None and known[1] > now:
            return token_hash, known[0]
        row = authenticate_token(token)
        db.session.rollback()
        if row is None:
            self._tokens.pop(token_hash, None)
            raise Unauthorized()
        self._tokens[token_hash] = (row.company_id, now + TOKEN_TTL_S)
        return token_hash, row.company_id

    def _check_template(self, company_id: int, event: Event) -> None:
        key = (company_id, event.job_type)
        now = time.monotonic()
        check = self._templates.get(key)
        if check is None or now - check.read_at > TEMPLATE_TTL_S:
            check = self._read_template(company_id, event.job_type, check, now)
        if check.compiled is None:
            raise EventError("no_template", f"no template for {event.job_type}", {"job_type": event.job_type})
        missing = _missing(check.compiled, event.job_type, event.data)
        if missing:
            raise EventError(fields.MISSING, f"data has no {', '.join(missing)}, which the mail needs: nothing is "
                                             "sent with a blank", {"fields": missing})
        if check.parts is not None and (not check.rendered_once or check.broken):
            try:
                _sample_render(check.parts, event.job_type, event.data)
            except EventError:
                check.rendered_once = check.broken = True
                raise
            check.rendered_once, check.broken = True, False

    def _read_template(self, company_id: int, job_type: str, known: _TemplateCheck | None,
                       now: float) -> _TemplateCheck:
        tpl = template_for(company_id, job_type)
        parts = None if tpl is None else (tpl.subject, tpl.body_text, tpl.body_html)
        key = None if tpl is None else (tpl.id, tpl.updated_at, parts)
        db.session.rollback()
        if known is not None and known.key == key:
            known.read_at = now
            return known
        compiled = None
        if parts is not None:
            try:
                compiled = CompiledTemplate(*parts)
            except RenderError as exc:
                raise EventError("template_error", str(exc), {"part": exc.part}) from None
        check = _TemplateCheck(key, compiled, now, parts)
        self._templates[(company_id, job_type)] = check
        return check

    # the writer's side
    def _before(self, items: list[_Pending]) -> list:
        """Count the group's requests against their tokens' rate limits in one round trip; past the
        limit, a ``RateLimited`` (not stored). Redis not answering lets them through (``api_rate.take``)."""
        wanted = Counter(p.token_hash for p in items if p.count)
        answers: list = [None] * len(items)
        limit = api_rate.limit()
        window, now = api_rate.window_of(time.time()), time.monotonic()
        with self._lock:  # the writers share what they saw
            for token_hash, n in list(wanted.items()):
                seen_window, total, at = self._rates.get(token_hash, (0, 0, 0.0))
                if seen_window == window and now - at < RATE_FRESH_S and total + n <= limit * RATE_HEADROOM:
                    del wanted[token_hash]  # far below its limit a moment ago: counted after the store
                    self._uncounted[token_hash] += n
                    self._rates[token_hash] = (seen_window, total + n, at)
        if not wanted:
            return answers
        counts = api_rate.take_many(dict(wanted))
        if counts is None:
            return answers
        for token_hash, (total, _) in counts.items():
            self._rates[token_hash] = (window, total, now)
        seen: Counter = Counter()
        for i, p in enumerate(items):
            if not p.count or p.token_hash not in counts:
                continue
            total, wait = counts[p.token_hash]
            seen[p.token_hash] += 1
            if total - wanted[p.token_hash] + seen[p.token_hash] > limit:
                answers[i] = RateLimited(limit, wait)
        return answers

    def _store(self, items: list[_Pending], conn, dialect) -> list:
        """Insert the group's events whose token is still live, in one transaction."""
        hashes = sorted({p.token_hash for p in items})
        now = utcnow()
        if dialect.driver == "psycopg":
            live, due = self._store_postgresql(items, now, conn, dialect)
        else:
            live, due = self._store_other(items, hashes, now.strftime("%Y-%m-%d %H:%M:%S.%f")
                                          if dialect.name == "sqlite" else now, conn, dialect)
        for h in due:
            self._used[h] = time.monotonic()
        for h in set(hashes) - set(live):
            self._tokens.pop(h, None)
        return [True if live.get(p.token_hash) == p.company_id else Unauthorized() for p in items]

    def _due_last_used(self, live) -> list[str]:
        return [h for h in live if self._used.get(h, 0.0) < time.monotonic() - LAST_USED_EVERY_S]

    def _store_other(self, items: list[_Pending], hashes: list[str], stamp, conn, dialect) -> tuple[dict, list]:
        """SQLite (and any driver but psycopg): the live tokens read, the events inserted, then the commit."""
        mark = "%s" if dialect.paramstyle in ("format", "pyformat") else "?"
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(f"SELECT token_hash, company_id FROM api_tokens WHERE revoked_at IS NULL "
                               f"AND token_hash IN ({', '.join([mark] * len(hashes))})", hashes)
                live = dict(cursor.fetchall())
                kept = [p for p in items if live.get(p.token_hash) == p.company_id]
                if kept:
                    one = f"({mark}, {mark}, {mark}, {mark})"
                    cursor.execute("INSERT INTO waiting_events (company_id, job_type, received_at, payload) "
                                   f"VALUES {', '.join([one] * len(kept))}",
                                   [v for p in kept for v in (p.company_id, p.job_type, stamp, p.payload)])
                due = self._due_last_used(live)
                if due:
                    cursor.execute(f"UPDATE api_tokens SET last_used_at = {mark} "
                                   f"WHERE token_hash IN ({', '.join([mark] * len(due))})", [stamp, *due])
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            try:
                conn.rollback()
            except dialect.loaded_dbapi.Error:
                pass
            raise NotStored(type(exc).__name__) from exc
        conn.commit()  # a failure here may or may not have committed: the group fails, as not answered
        return live, due

    def _store_postgresql(self, items: list[_Pending], now: datetime, conn, dialect) -> tuple[dict, list]:
        """PostgreSQL: the live tokens read and the events of live tokens inserted (in the group's order) by one
        statement in autocommit, its own transaction: one round trip, answered once the commit is durable (the
        server commits at the protocol's Sync, before it says it is ready). Its text is the same for any group
        (the values go as one JSON parameter), so psycopg prepares it once per connection and the server plans it once.

        A connection the server closed since its last use is found before anything is sent (``NotStored``: a
        fresh one is taken). An error the server reports (it has a SQLSTATE) rolled the statement back:
        ``NotStored``. A connection lost before the answer may or may not have committed: the group fails."""
        driver = conn.driver_connection
        if driver is None or connection_lost(conn, dialect):  # nothing was sent
            raise NotStored("connection lost")
        params = (json.dumps([{"h": p.token_hash, "c": p.company_id, "t": p.job_type, "p": p.payload}
                              for p in items], separators=(",", ":")), now)
        with autocommit_cursor(driver, dialect) as cursor:
            live = dict(cursor.execute(_PG_STORE, params).fetchall())
            due = self._due_last_used(live)
            if due:  # its own transaction, after the events' commit: whatever becomes of it, they are stored
                try:
                    cursor.execute("UPDATE api_tokens SET last_used_at = %s "
                                   "WHERE token_hash = ANY(%s::text[])", (now, due))
                except dialect.loaded_dbapi.Error as exc:  # a lost connection is found before the next group
                    log.warning("Events: last use of tokens not recorded (%s)", type(exc).__name__)
                    due = []
        return live, due

    def _after(self, items: list[_Pending], results: list) -> None:
        """Count the stored events in their windows (the ``202``'s mode) and see each window has a closer."""
        stored = [(i, p) for i, (p, r) in enumerate(zip(items, results, strict=True)) if r is True]
        for i, _ in stored:
            results[i] = Accepted(0, "single")
        windows: dict[tuple[int, str], list[int]] = {}
        for i, p in stored:
            windows.setdefault((p.company_id, p.job_type), []).append(i)
        with self._lock:
            uncounted, self._uncounted = self._uncounted, Counter()
        if not windows and not uncounted:
            return
        threshold = settings.current().bulk_threshold
        rate_window, now = api_rate.window_of(time.time()), time.monotonic()
        keys, args = [], []
        for (company_id, job_type), positions in windows.items():
            keys.append(count_key(company_id, job_type))
            args += [len(positions), 3600]
        for token_hash, n in uncounted.items():
            keys.append(api_rate.key(token_hash, rate_window))
            args += [n, 2 * api_rate.WINDOW_S]
        try:
            answers = _count(keys, args)
        except api_rate.UNAVAILABLE as exc:
            log.warning("Events: window counts unavailable (%s); the sweep closes the windows", type(exc).__name__)
            return
        totals = answers[:len(windows)]
        for token_hash, total in zip(uncounted, answers[len(windows):], strict=True):
            self._rates[token_hash] = (rate_window, total, now)
        for (window, positions), total in zip(windows.items(), totals, strict=True):
            self._counts[window] = total
            first = total - len(positions) + 1
            for n, i in enumerate(positions):
                count = first + n
                results[i] = Accepted(count, "bulk" if count > threshold else "single")
        self._closers.after_commit(windows)


#: the writer's statement on PostgreSQL (``Intake._store_postgresql``): the group's live tokens, and its events
#: of live tokens inserted in the group's order; one text for every group, the group's values in one JSON
#: parameter (one string for the driver to send, where arrays of values cost it a conversion per value)
_PG_STORE = ("WITH v AS (SELECT * FROM ROWS FROM (json_to_recordset(%s::json) AS (h text, c integer, t text, p text)) "
             "WITH ORDINALITY AS v(h, c, t, p, n)), "
             "live AS (SELECT token_hash, company_id FROM api_tokens WHERE revoked_at IS NULL "
             "AND token_hash IN (SELECT h FROM v)), "
             "ins AS (INSERT INTO waiting_events (company_id, job_type, received_at, payload) "
             "SELECT v.c, v.t, %s::timestamp, v.p FROM v "
             "JOIN live ON live.token_hash = v.h AND live.company_id = v.c ORDER BY v.n) "
             "SELECT token_hash, company_id FROM live")
#: the writer's counts after a stored group (``Intake._after``), one call: each key increased by its number
#: (``ARGV[2i-1]``), its expiry set (``ARGV[2i]`` seconds); the totals, in order
_COUNT = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCRBY', key, ARGV[2 * i - 1])
  redis.call('EXPIRE', key, ARGV[2 * i])
end
return out
"""
_count_scripts: dict = {}


def _count(keys: list[str], args: list[int]) -> list[int]:
    """Run ``_COUNT`` (registered once per Redis client: EVALSHA, its source sent again only when Redis lost it)."""
    conn = connection()
    script = _count_scripts.get(id(conn))
    if script is None:
        script = _count_scripts[id(conn)] = conn.register_script(_COUNT)
    return [int(n) for n in script(keys=keys, args=args)]


def count_key(company_id: int, job_type: str) -> str:
    return f"{PREFIX}count:{company_id}:{job_type}"


# -- windows become jobs ------------------------------------------------------------------
@dataclass
class Closed:
    """What ``close_window`` did: the jobs it made, or when the window will be due."""

    jobs: list = field(default_factory=list)
    due: datetime | None = None
    more: bool = False
    events: int = 0


class _Taken(Exception):
    """Another closer deleted these events first."""


def close_window(company_id: int, job_type: str, *, now: datetime | None = None) -> Closed:
    """Make the jobs of a due window; a window not due yet says when it will be.

    Each job is created in one transaction with the conditional delete of its events, so the
    events become recipients exactly once, whichever closers run."""
    now = now or utcnow()
    release_events_closer(company_id, job_type)
    window = (WaitingEvent.company_id == company_id, WaitingEvent.job_type == job_type)
    count, first, last = db.session.execute(
        select(func.count(), func.min(WaitingEvent.received_at), func.max(WaitingEvent.received_at))
        .where(*window)).one()
    db.session.rollback()
    if not count:
        return Closed()
    due = due_at(first, last)
    if due > now and count < CLOSE_LIMIT:
        return Closed(due=due)
    return _close(company_id, job_type, count)


def open_windows() -> Sequence[tuple[int, str, int, datetime, datetime]]:
    """Every window holding events, ``(company_id, job_type, count, first, last)``: one
    grouped read of ``waiting_events`` (its ``(company_id, job_type, id)`` index)."""
    rows = db.session.execute(
        select(WaitingEvent.company_id, WaitingEvent.job_type, func.count(), func.min(WaitingEvent.received_at),
               func.max(WaitingEvent.received_at))
        .group_by(WaitingEvent.company_id, WaitingEvent.job_type)).tuples().all()
    db.session.rollback()
    return rows


def close_due_windows(*, now: datetime | None = None, budget: int = CLOSE_LIMIT) -> Pass:
    """Close every company's due windows of LMS events in one pass (``core.submissions.close_due``: the
    longest waiting first, until ``budget`` events were taken). Exactly once as ``close_window``: each job
    commits with its events' delete."""

    def close(company_id: int, job_type: str, count: int) -> tuple[list, int, bool]:
        closed = _close(company_id, job_type, count)
        return closed.jobs, closed.events, closed.more

    return close_due(open_windows(), close, now=now or utcnow(), budget=budget)


def _close(company_id: int, job_type: str, count: int) -> Closed:
    """Turn a due window's events (at most ``CLOSE_LIMIT``) into jobs."""
    window = (WaitingEvent.company_id == company_id, WaitingEvent.job_type == job_type)
    cfg = settings.current()
    if db.session.get(Company, company_id) is None:
        return Closed()
    # the rows another closer is turning into jobs are skipped, not waited for nor made again (its delete
    # commits with its jobs); the conditional delete stays the guarantee (SQLite has no row locks)
    rows = db.session.execute(select(WaitingEvent.id, WaitingEvent.payload).where(*window)
                              .order_by(WaitingEvent.id).limit(CLOSE_LIMIT)
                              .with_for_update(skip_locked=True)).all()
    if not rows:
        db.session.rollback()
        return Closed()
    tpl = template_for(company_id, job_type)
    ids = [r.id for r in rows]
    if tpl is None:
        _dropped(company_id, job_type, ids, "no_template")
        return Closed(events=len(ids), more=count > CLOSE_LIMIT)
    items = [(r.id, {"email": r.payload["email"], "data": r.payload.get("data") or {}}) for r in rows]
    if len(items) > cfg.bulk_threshold:
        groups = [items[i:i + cfg.max_recipients] for i in range(0, len(items), cfg.max_recipients)]
    else:
        groups = [[item] for item in items]
    made = _create_all(company_id, job_type, tpl.name, groups)
    if made is None:  # another closer took some of them: each group by itself, its own delete deciding
        made = [job for group in groups if (job := _create_one(company_id, job_type, tpl.name, group)) is not None]
    _uncount(company_id, job_type, len(ids))
    if made:
        log.info("Company %s: %s %s events became %s job(s)", company_id, len(ids), job_type, len(made))
    return Closed(made, more=count > CLOSE_LIMIT, events=len(ids))


def _create_all(company_id: int, job_type: str, template: str, groups: list[list]) -> list | None:
    """Every group's job in one transaction (``core.jobs.create_jobs``) with the delete of all the groups'
    events, those of a group whose sample render failed included (dropped, as ``_dropped`` does, with its
    audit entry): the events become recipients exactly once. None when another closer deleted some of them
    first (nothing committed)."""
    if not groups:
        return []

    def before_commit(made, failed: dict[int, JobError]) -> None:
        _delete([i for group in groups for i, _ in group])
        for index, exc in failed.items():
            ids = [i for i, _ in groups[index]]
            log.error("Company %s: %s %s events dropped: %s", company_id, len(ids), job_type, exc.code)
            audit.record("events_dropped", company_id=company_id, object_type="events", object_id=str(ids[0]),
                         details={"type": job_type, "events": len(ids), "reason": exc.code})

    try:
        made, _failed = create_jobs(company_id, job_type, template, [[r for _, r in group] for group in groups],
                                    source="event", before_commit=before_commit)
    except _Taken:
        db.session.rollback()
        return None
    except JobError as exc:  # the template itself (gone, broken): no group can make a job
        db.session.rollback()
        _dropped(company_id, job_type, [i for group in groups for i, _ in group], exc.code)
        return []
    return [job for _, job in made]


def _create_one(company_id: int, job_type: str, template: str, group: list):
    """One group's job, committed with its events' delete; None if another closer took them or it failed."""
    group_ids = [i for i, _ in group]
    try:
        # each event was checked when it came; a template changed since fails only the events it must
        job, _ = create_job(company_id, {"type": job_type, "template": template, "on_missing": "fail_recipient",
                                         "recipients": [r for _, r in group]},
                            source="event", max_recipients=settings.current().max_recipients,
                            before_commit=lambda job: _delete(group_ids))
    except _Taken:
        db.session.rollback()
        return None
    except JobError as exc:
        db.session.rollback()
        _dropped(company_id, job_type, group_ids, exc.code)
        return None
    return job


def _delete(ids: list[int]) -> None:
    deleted = rowcount(db.session.execute(WaitingEvent.__table__.delete().where(WaitingEvent.id.in_(ids))))
    if deleted != len(ids):
        raise _Taken()


def _uncount(company_id: int, job_type: str, n: int) -> None:
    """The window's count no longer holds the events just taken (Redis keeps the count for the mode only)."""
    try:
        conn = connection()
        if conn.decrby(count_key(company_id, job_type), n) <= 0:
            conn.delete(count_key(company_id, job_type))
    except (RedisError, OSError):
        return


def _dropped(company_id: int, job_type: str, ids: list[int], reason: str) -> None:
    """Events that cannot become a job (template deleted or broken since they were accepted)."""
    try:
        _delete(ids)
    except _Taken:
        db.session.rollback()
        return
    log.error("Company %s: %s %s events dropped: %s", company_id, len(ids), job_type, reason)
    audit.record("events_dropped", company_id=company_id, object_type="events", object_id=str(ids[0]),
                 details={"type": job_type, "events": len(ids), "reason": reason})
    db.session.commit()


def stale_windows(older_than: datetime) -> list[tuple[int, str]]:
    """Windows holding an event received before ``older_than``: their closer was lost."""
    return [(company_id, job_type) for company_id, job_type in db.session.execute(
        select(WaitingEvent.company_id, WaitingEvent.job_type).where(WaitingEvent.received_at < older_than)
        .distinct()).tuples()]


def waiting_count(company_id: int, job_type: str | None = None) -> int:
    """Events of the company waiting in its windows (tests, support)."""
    stmt = select(WaitingEvent.id).where(WaitingEvent.company_id == company_id)
    if job_type is not None:
        stmt = stmt.where(WaitingEvent.job_type == job_type)
    return len(db.session.execute(stmt).all())


# -- events held in Redis by the version before --------------------------------------------
LEGACY_OPEN, LEGACY_CLOSED = PREFIX + "open", PREFIX + "closed"


def import_legacy(conn: Redis) -> int:
    """Events an earlier version held in Redis (a list per open window, ``buf:<company>:<type>``, listed
    in the ``open`` set; ``taken:<window>`` once taken, listed in ``closed``): stored as waiting events
    (their windows close as any), then the lists deleted. Returns the events moved."""
    opened = [as_text(m) for m in conn.zrange(LEGACY_OPEN, 0, -1)]
    taken = [as_text(m) for m in conn.zrange(LEGACY_CLOSED, 0, -1)]
    if not opened and not taken:
        return 0
    lists = []
    for member in opened:
        company, _, job_type = member.partition(":")
        lists.append((f"{PREFIX}buf:{member}", int(company), job_type))
    for member in taken:
        company, job_type, window = member.split(":", 2)
        lists.append((f"{PREFIX}taken:{window}", int(company), job_type))
    moved = 0
    for key, company_id, job_type in lists:
        tokens = [as_text(t) for t in conn.lrange(key, 0, -1)]
        if tokens and db.session.get(Company, company_id) is not None:
            db.session.execute(text("INSERT INTO waiting_events (company_id, job_type, received_at, payload) "
                                    "VALUES (:c, :t, :r, :p)"),  # the tokens as they are: already encrypted
                               [{"c": company_id, "t": job_type, "r": utcnow(), "p": token} for token in tokens])
            db.session.commit()
            moved += len(tokens)
        conn.delete(key)
    conn.delete(LEGACY_OPEN, LEGACY_CLOSED, *(f"{PREFIX}{kind}:{m}" for m in opened for kind in ("win", "last")))
    log.warning("Events: %s events of an earlier version moved from Redis to the database", moved)
    return moved


def hold_s() -> float:
    """The longest a window stays open, and a grace: past it, a waiting event's closer was lost."""
    s = settings.current()
    hold = s.bulk_max_hold_s if s.bulk_max_hold_s is not None else 6 * s.bulk_window_s
    return hold + s.bulk_window_s


def stale_before(grace_s: float = 30.0) -> datetime:
    return utcnow() - timedelta(seconds=hold_s() + grace_s)


