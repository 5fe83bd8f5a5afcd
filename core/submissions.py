"""SMTP submission's domain: what a message must be to be taken, how it is stored, how it becomes a job.

The SMTP process (``submission``) asks here whether an envelope sender and a
message may be taken (``check_sender``, ``take``), stores the taken messages
many at a time in one transaction (``store``), and only then answers ``250``.
A stored message waits (``smtp_messages.status = waiting``) in its window:
the messages of one company and job type, grouped as LMS events are
(``OFFLOAD_BULK_WINDOW_S``, ``OFFLOAD_BULK_THRESHOLD``, ``OFFLOAD_BULK_MAX_HOLD_S``).
``close_window`` (run by a worker when the window is due, and by the
recovery sweep for any window whose closer was lost) turns them into one
bulk job (more than the threshold) or one job each: each envelope recipient
is a recipient with ``{"smtp_message_id": id}`` as its data, checked like an
API job's (invalid addresses fail, suppressed ones are not sent). The
messages are marked ``jobbed`` in the transaction that creates their jobs,
by a conditional update, so two closers never make two jobs of one message.
"""
from __future__ import annotations

import json
import logging
import select as io_select
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from sqlalchemy import Dialect, PoolProxiedConnection, func, select, text

from core import audit, crypto, sendstats, settings
from core.bulk import execute_for_ids, insert_recipients
from core.certificates import open_storage
from core.db import db, rowcount
from core.delivery_settings import provider_config
from core.groupcommit import NotStored, autocommit_cursor
from core.jobs import classify_recipients, commit_keeping
from core.models import (
    DEFAULT_PRIORITY,
    JOB_TYPES,
    JOBBED,
    QUEUED,
    R_FAILED,
    R_SUPPRESSED,
    WAITING,
    Company,
    Job,
    SmtpMessage,
    is_bulk,
    utcnow,
)
from core.queue import enqueue_job, schedule_windows_close, windows_slot
from core.suppressions import suppressed_addresses
from providers import mime, registry
from providers.storage import ObjectNotFound

log = logging.getLogger(__name__)

DEFAULT_TYPE = "notification"
#: the jobs it makes (``Job.source``)
SOURCE = "smtp"
TYPE_HEADER = "X-Offload-Type"
#: fields taken out before the message is stored: Bcc is never delivered, the type header is ours
REMOVED_FIELDS = ("bcc", TYPE_HEADER.lower())
#: a message larger than this goes to the company's own storage when it has one (else the database)
LARGE_BYTES = 1024 * 1024
#: the most messages one close takes (a bigger window is closed again at once for the rest)
CLOSE_LIMIT = 50_000
SUBJECT_LIMIT = 998


class Refused(Exception):
    """A message or sender the service does not take; ``reply`` is the SMTP answer."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


REFUSED_SENDER = "550 5.7.1 Sender address is not at one of this account's sender domains"
REFUSED_FROM = "550 5.7.1 From: address is not at one of this account's sender domains"
REFUSED_NO_FROM = "550 5.7.1 The message has no From: address"


@dataclass(frozen=True)
class Account:
    """Who signed in: the company, the token's prefix, the domains it may send as, and the kind of the
    company's own storage (its certificate bucket) that large messages go to (None: the database)."""

    company_id: int
    token_prefix: str
    domains: frozenset[str]
    storage: str | None = None


@dataclass
class Taken:
    """One message ready to store."""

    company_id: int
    job_type: str
    mail_from: str
    rcpt_to: list[str]
    subject: str
    raw: bytes
    peer: str | None
    token_prefix: str | None
    #: where the MIME is when the company's storage holds it (``raw`` is then not stored)
    storage_key: str | None = None

    def values(self, received_at: str | datetime) -> tuple:
        """The row's values in ``STORED_COLUMNS`` order, as the driver takes them: the MIME encrypted
        here (``core.crypto``, as ``EncryptedBytes`` would), the recipients as JSON text."""
        raw = None if self.storage_key else crypto.encrypt_bytes(self.raw)
        return (self.company_id, WAITING, self.job_type, self.mail_from, json.dumps(self.rcpt_to), self.subject,
                len(self.raw), raw, self.storage_key, self.peer, self.token_prefix, received_at)


# -- who may send what ------------------------------------------------------------------

def sender_domains(company: Company) -> frozenset[str]:
    """The domains a company's SMTP mail may come from: its sender's, and its ``sender_domains``."""
    delivery = company.settings
    found = set()
    if delivery is not None:
        sender = mime.addresses(delivery.sender or "")
        if sender:
            found.add(sender[0].rpartition("@")[2].lower())
        listed = delivery.get_setting("sender_domains") or ""
        found.update(d.strip().lower() for d in str(listed).split(",") if d.strip())
    return frozenset(d for d in found if d)


def cloud_storage(company: Company) -> str | None:
    """The kind of the company's own storage (S3, R2, R2 behind its Worker), if it has one; never this
    machine's disk, which the workers of other machines could not read."""
    return registry.choose_storage(provider_config(company))


def store_large(account: Account, raw: bytes) -> str:
    """Put a large message in the company's storage; its key (``smtp/<company>/<day>/<random>.eml``)."""
    company = db.session.get_one(Company, account.company_id)
    try:
        key = f"smtp/{account.company_id}/{utcnow():%Y%m%d}/{uuid.uuid4().hex}.eml"
        with open_storage(company, account.storage) as storage:
            storage.put(key, raw, "message/rfc822")
        return key
    finally:
        db.session.rollback()


def domain_allowed(address: str, domains: frozenset[str]) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(local and at) and domain.lower().rstrip(".") in domains


def check_sender(account: Account, address: str) -> None:
    """MAIL FROM: the envelope sender must be at one of the account's domains."""
    if not domain_allowed(address, account.domains):
        raise Refused(REFUSED_SENDER)


_stamp: tuple[int, str] = (0, "")


def _date_now() -> str:
    """RFC 5322's date of now, made once a second."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _stamp[1]


def received_line(*, helo: str, peer: str | None, by: str, tls: bool, now: datetime | None = None) -> bytes:
    """Our trace field (RFC 5321 §4.4): who handed the message over, to whom, how, when."""
    helo = "".join(c for c in helo if c.isalnum() or c in ".-_[]:")[:255] or "unknown"
    where = f" ([{peer}])" if peer else ""
    protocol = "ESMTPSA" if tls else "ESMTPA"
    stamp = format_datetime(now.astimezone(UTC)) if now is not None else _date_now()
    return f"Received: from {helo}{where}\r\n\tby {by} (ManiReports Cloud Offload) with {protocol};\r\n\t{stamp}\r\n" \
        .encode("ascii")


def take(account: Account, mail_from: str, rcpt_to: list[str], data: bytes, received: bytes,
         peer: str | None) -> Taken:
    """The message to store, or ``Refused``: every ``From:`` address at the account's domains,
    ``X-Offload-Type`` (if any) a job type. The stored bytes are ``received`` and the message
    as it came, without ``Bcc:`` and ``X-Offload-Type:``."""
    head, rest = mime.split(data)
    fields = mime.fields(head)
    found: dict[str, list[str]] = {}
    for key, field in fields:
        if key in _READ_FIELDS:
            found.setdefault(key, []).append(mime.value(field))
    senders = [a for v in found.get("from", ()) for a in mime.addresses(v)]
    if not senders:
        raise Refused(REFUSED_NO_FROM)
    if not all(domain_allowed(a, account.domains) for a in senders):
        raise Refused(REFUSED_FROM)
    job_type = DEFAULT_TYPE
    given = found.get(TYPE_HEADER.lower())
    if given:
        job_type = given[0].strip().lower()
        if job_type not in JOB_TYPES:
            raise Refused(f"550 5.6.0 {TYPE_HEADER} must be one of {', '.join(JOB_TYPES)}")
    subject = mime.decoded(found["subject"][0])[:SUBJECT_LIMIT] if "subject" in found else ""
    kept = b"".join(field for key, field in fields if key not in REMOVED_FIELDS)
    return Taken(account.company_id, job_type, mail_from, rcpt_to, subject, received + kept + rest, peer,
                 account.token_prefix)


_READ_FIELDS = frozenset({"from", "subject", TYPE_HEADER.lower()})


# -- storing --------------------------------------------------------------------------

STORED_COLUMNS = ("company_id", "status", "job_type", "mail_from", "rcpt_to", "subject", "size", "raw",
                  "storage_key", "peer", "token_prefix", "received_at")


def _insert_sql(dialect: Dialect, rows: int) -> str:
    """One multi-row INSERT ... RETURNING id in the driver's own parameter style."""
    postgres = dialect.name == "postgresql"
    mark = "%s" if dialect.paramstyle in ("format", "pyformat") else "?"
    one = "(" + ", ".join(f"{mark}::json" if postgres and c == "rcpt_to" else mark for c in STORED_COLUMNS) + ")"
    return f"INSERT INTO smtp_messages ({', '.join(STORED_COLUMNS)}) VALUES {', '.join([one] * rows)} RETURNING id"


def store(messages: list[Taken], conn: PoolProxiedConnection, dialect: Dialect) -> list[int]:
    """Insert ``messages`` on the driver connection ``conn`` and commit: one statement, one transaction
    (one fsync) for all. Their ids, in order (ids of one statement ascend in row order). Straight to the
    driver: the writer calls this for every group of messages, and SQLAlchemy's per-value processing
    would double its cost; the values are what ``SmtpMessage``'s column types would write.

    On PostgreSQL the statement runs in autocommit, as its own transaction: one round trip, whose answer
    comes only once the commit is durable (the server commits at the protocol's Sync, before it says it is
    ready; psycopg reads up to then). An error the server reports (it has a SQLSTATE) rolled it back:
    ``NotStored``. A connection lost before the answer may or may not have committed: it is not."""
    now = utcnow()
    received = now.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect.name == "sqlite" else now
    params = [value for m in messages for value in m.values(received)]
    sql = _insert_sql(dialect, len(messages))
    if dialect.driver == "psycopg":
        driver = conn.driver_connection
        if driver is None:  # invalidated: nothing was sent
            raise NotStored("no connection")
        with autocommit_cursor(driver, dialect) as cursor:
            cursor.execute(sql, params)
            return sorted(row[0] for row in cursor.fetchall())
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            ids = sorted(row[0] for row in cursor.fetchall())
        finally:
            cursor.close()
    except dialect.loaded_dbapi.Error as exc:
        raise NotStored(type(exc).__name__) from exc
    conn.commit()  # a failure here may or may not have committed: it is not NotStored
    return ids


async def store_async(messages: list[Taken], driver, dialect: Dialect) -> list[int]:
    """``store`` on an asyncio psycopg connection in autocommit (``driver``: ``psycopg.AsyncConnection``), for
    the SMTP process's event loop: the same statement and answers, one round trip, and no thread between
    the session and the database (a writer thread waits for the loop's GIL at every step of its query)."""
    now = utcnow()
    params = [value for m in messages for value in m.values(now)]
    try:
        async with driver.cursor() as cursor:
            await cursor.execute(_insert_sql(dialect, len(messages)), params)
            return sorted(row[0] for row in await cursor.fetchall())
    except dialect.loaded_dbapi.Error as exc:
        if getattr(exc, "sqlstate", None):
            raise NotStored(type(exc).__name__) from exc
        raise


def connection_lost(conn: PoolProxiedConnection, dialect: Dialect) -> bool:
    """Whether the server has closed ``conn`` since its last use (it restarted, or ended idle sessions),
    known without a round trip: an idle PostgreSQL connection's socket is readable only when the server
    said goodbye (its FATAL, then EOF). The writer then takes a fresh connection before it sends, as a
    statement sent on a lost connection could not tell whether it committed."""
    if dialect.driver != "psycopg":
        return False
    return driver_lost(conn.driver_connection, dialect)


def driver_lost(driver, dialect: Dialect) -> bool:
    """``connection_lost`` for a psycopg connection itself (sync or asyncio)."""
    if driver is None or driver.closed:
        return True
    try:
        fd = driver.pgconn.socket
        return bool(io_select.select([fd], [], [], 0)[0])
    except (OSError, ValueError, dialect.loaded_dbapi.Error):
        return True


def windows_touched(messages: Iterable[Taken]) -> set[tuple[int, str]]:
    return {(m.company_id, m.job_type) for m in messages}


class Closers:
    """Sees that a closer comes for the windows a commit touched: the one closer of every due window
    (``schedule_windows_close``), at the first tick a window after the commit. A process asks Redis
    once per tick it needs (``SET NX`` makes it one task per tick across processes), not per window:
    a hundred companies' windows share one closer a tick."""

    def __init__(self, schedule=schedule_windows_close):
        #: ``schedule(delay_s) -> tick | None``
        self._schedule = schedule
        self._known: set[int] = set()

    def pending(self, windows: Iterable[tuple[int, str]]) -> bool:
        """Whether ``after_commit`` would ask Redis (without asking it): false while this tick's closer is known."""
        return bool(windows) and windows_slot(settings.current().bulk_window_s) not in self._known

    def after_commit(self, windows: Iterable[tuple[int, str]]) -> None:
        if not windows:
            return
        delay = settings.current().bulk_window_s
        slot = windows_slot(delay)
        if slot in self._known:
            return
        if self._schedule(delay) is not None:
            self._known = {s for s in self._known if s > slot - 600} | {slot}


# -- windows become jobs ----------------------------------------------------------------

def max_hold_s() -> float:
    s = settings.current()
    return s.bulk_max_hold_s if s.bulk_max_hold_s is not None else 6 * s.bulk_window_s


def due_at(opened: datetime, last: datetime) -> datetime:
    """When a window closes: a window after its last message, at most the max hold after its first."""
    s = settings.current()
    return min(last + timedelta(seconds=s.bulk_window_s), opened + timedelta(seconds=max_hold_s()))


@dataclass
class Closed:
    """What ``close_window`` did: the jobs it made, or when the window will be due."""

    jobs: list[Job]
    due: datetime | None = None
    more: bool = False


def close_window(company_id: int, job_type: str, *, now: datetime | None = None) -> Closed:
    """Make the jobs of a due window (and queue them); a window not due yet says when it will be."""
    now = now or utcnow()
    rows = db.session.execute(
        select(SmtpMessage.id, SmtpMessage.received_at, SmtpMessage.rcpt_to, SmtpMessage.subject)
        .where(SmtpMessage.status == WAITING, SmtpMessage.company_id == company_id,
               SmtpMessage.job_type == job_type)
        .order_by(SmtpMessage.id).limit(CLOSE_LIMIT)
        .with_for_update(skip_locked=True)).all()  # another closer's rows: skipped, not made again
    if not rows:
        db.session.rollback()
        return Closed([])
    due = due_at(rows[0].received_at, max(r.received_at for r in rows))
    if due > now and len(rows) < CLOSE_LIMIT:
        db.session.rollback()
        return Closed([], due=due)
    if db.session.get(Company, company_id) is None:
        db.session.rollback()
        return Closed([])
    threshold = settings.current().bulk_threshold
    groups = _bulk_groups(rows) if len(rows) > threshold else [[row] for row in rows]
    jobs = _jobs_of(company_id, job_type, groups)
    if jobs is None:  # another closer took these messages first
        db.session.rollback()
        return Closed([])
    commit_keeping(*jobs)
    for job in jobs:
        enqueue_job(job)
    log.info("Company %s: %s SMTP messages (%s) became %s jobs", company_id, len(rows), job_type, len(jobs))
    return Closed(jobs, more=len(rows) == CLOSE_LIMIT)


@dataclass
class Pass:
    """What one pass over every company's windows did: the jobs made, the windows closed, the events or
    messages taken, the first time a window left open is due, and whether due ones were left for another pass."""

    jobs: list
    windows: int = 0
    taken: int = 0
    next_due: datetime | None = None
    more: bool = False


def close_due(windows: Iterable[tuple[int, str, int, datetime, datetime]],
              close: Callable[[int, str, int], tuple[list, int, bool]], *, now: datetime, budget: int) -> Pass:
    """One pass over ``windows`` (``(company_id, job_type, count, first, last)``): the longest waiting first
    (no company waits behind another's traffic for more than one pass), each due one closed by
    ``close(company_id, job_type, count) -> (jobs, taken, more)`` until ``budget`` were taken (``more``: the
    rest in the next pass). LMS events (``core.events``) and SMTP messages close their windows so."""
    done = Pass([])
    for company_id, job_type, count, first, last in sorted(windows, key=lambda r: (r[3], r[0], r[1])):
        due = due_at(first, last)
        if due > now and count < CLOSE_LIMIT:
            done.next_due = due if done.next_due is None else min(done.next_due, due)
            continue
        if done.taken >= budget:
            done.more = True
            continue
        jobs, taken, more = close(company_id, job_type, count)
        done.jobs.extend(jobs)
        done.windows += 1
        done.taken += taken
        done.more = done.more or more
    return done


def close_due_windows(*, now: datetime | None = None, budget: int = CLOSE_LIMIT) -> Pass:
    """Close every company's due SMTP windows in one pass (``close_due``); one grouped read finds them (the
    ``(status, company_id, job_type, id)`` index). Exactly once as ``close_window``."""
    now = now or utcnow()
    rows = db.session.execute(
        select(SmtpMessage.company_id, SmtpMessage.job_type, func.count(), func.min(SmtpMessage.received_at),
               func.max(SmtpMessage.received_at))
        .where(SmtpMessage.status == WAITING).group_by(SmtpMessage.company_id, SmtpMessage.job_type)).tuples().all()
    db.session.rollback()

    def close(company_id: int, job_type: str, count: int) -> tuple[list, int, bool]:
        closed = close_window(company_id, job_type, now=now)
        return closed.jobs, min(count, CLOSE_LIMIT), closed.more

    return close_due(rows, close, now=now, budget=budget)


def _bulk_groups(rows) -> list[list]:
    """Consecutive messages, at most ``OFFLOAD_MAX_RECIPIENTS`` recipients per job (a message is never split)."""
    limit = settings.current().max_recipients
    groups: list[list] = [[]]
    count = 0
    for row in rows:
        n = len(row.rcpt_to)
        if groups[-1] and count + n > limit:
            groups.append([])
            count = 0
        groups[-1].append(row)
        count += n
    return groups


def _jobs_of(company_id: int, job_type: str, groups: list[list]) -> list[Job] | None:
    """A job of each group's messages, with their recipients, the messages marked: all in the caller's
    transaction, one insert of each kind for all the groups (a window of single messages is one flush, one
    recipients insert, one conditional update, not one of each per message). None if another closer took
    some of the messages meanwhile (the caller rolls back)."""
    jobs = [Job(company_id=company_id, type=job_type, status=QUEUED, source=SOURCE, subject=group[0].subject,
                priority=DEFAULT_PRIORITY[job_type], options={"smtp_messages": len(group)}) for group in groups]
    db.session.add_all(jobs)
    db.session.flush()
    bulk = is_bulk(job_type, DEFAULT_PRIORITY[job_type])
    suppressed = suppressed_addresses(company_id, bulk)
    rows: list[tuple] = []
    for job, group in zip(jobs, groups, strict=True):
        items = [{"email": address, "data": {"smtp_message_id": row.id}} for row in group for address in row.rcpt_to]
        made, counts = classify_recipients(company_id, job.id, items, bulk=bulk, distinct=False, suppressed=suppressed)
        rows += made
        job.email_count = len(made)
        job.emails_failed = counts[R_FAILED]
        job.emails_suppressed = counts[R_SUPPRESSED]
        sendstats.record(company_id, job.id, counts)
        audit.record("job_created", company_id=company_id, object_type="job", object_id=job.id, actor="smtp",
                     details={"type": job.type, "recipients": len(made), "source": "smtp", "messages": len(group)})
    ids = [row.id for group in groups for row in group]
    taken = execute_for_ids(f"UPDATE smtp_messages SET status = '{JOBBED}' WHERE {{ids}} AND status = '{WAITING}'",
                            ids)
    if taken.rowcount != len(ids):
        return None
    marks = [{"job": job.id, "id": row.id} for job, group in zip(jobs, groups, strict=True) for row in group]
    db.session.execute(text("UPDATE smtp_messages SET job_id = :job WHERE id = :id"), marks)
    insert_recipients(rows)
    return jobs


def stale_windows(grace_s: float = 30.0) -> list[tuple[int, str]]:
    """Windows with a message older than any window can stay open: their closer was lost."""
    s = settings.current()
    old = utcnow() - timedelta(seconds=max_hold_s() + s.bulk_window_s + grace_s)
    return [(r.company_id, r.job_type) for r in db.session.execute(text(
        f"SELECT DISTINCT company_id, job_type FROM smtp_messages WHERE status = '{WAITING}' "
        "AND received_at < :old"), {"old": old}).all()]


# -- delivery ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stored:
    mail_from: str
    raw: bytes
    subject: str = ""
    storage_key: str | None = None


def stored_messages(company_id: int, message_ids: Iterable[int]) -> dict[int, Stored]:
    """The stored messages of ``message_ids`` (the company's only), decrypted, or read from the
    company's storage. A purged (or missing) message is left out."""
    ids = sorted(set(message_ids))
    if not ids:
        return {}
    rows = db.session.execute(select(SmtpMessage.id, SmtpMessage.mail_from, SmtpMessage.raw, SmtpMessage.storage_key,
                                     SmtpMessage.subject)
                              .where(SmtpMessage.company_id == company_id, SmtpMessage.id.in_(ids))).all()
    found = {r.id: Stored(r.mail_from, r.raw, r.subject, r.storage_key) for r in rows if r.raw is not None}
    kept = [r for r in rows if r.raw is None and r.storage_key]
    if kept:
        with open_storage(db.session.get_one(Company, company_id)) as storage:
            for row in kept:
                try:
                    found[row.id] = Stored(row.mail_from, storage.get(row.storage_key), row.subject, row.storage_key)
                except ObjectNotFound:
                    log.warning("Company %s: SMTP message %s is no longer in its storage", company_id, row.id)
    return found


UNAVAILABLE = "message_unavailable: the message as the LMS sent it is no longer stored"


def raw_for(company_id: int, rows) -> tuple[dict[int, Stored], list[tuple[int, str]]]:
    """The stored message of each recipient of an SMTP job (``rows``: ``(id, email, data, attempts)``,
    data ``{"smtp_message_id": ...}``), and the recipients whose message is gone, with the reason."""
    wanted = {rid: (data or {}).get("smtp_message_id") for rid, _email, data, _attempts in rows}
    stored = stored_messages(company_id, [mid for mid in wanted.values() if isinstance(mid, int)])
    found, failures = {}, []
    for rid, mid in wanted.items():
        if mid in stored:
            found[rid] = stored[mid]
        else:
            failures.append((rid, UNAVAILABLE))
    return found, failures


def link_key(company_id: int, job_id: int, message_id: int) -> str:
    """Where a message kept in the database goes in the company's storage when it is too large for its
    cloud queue (``smtp/<company>/<job>/<message>.eml``)."""
    return f"smtp/{company_id}/{job_id}/{message_id}.eml"


def record_link(company_id: int, message_id: int, key: str) -> None:
    """The message is also in the company's storage under ``key`` (deleted by ``purge_raw``)."""
    db.session.execute(text("UPDATE smtp_messages SET storage_key = :k WHERE id = :m AND company_id = :c"),
                       {"k": key, "m": message_id, "c": company_id})


def relay_from(raw: bytes, service_from: str, approved: set[str]) -> dict[str, str]:
    """The header fields the operator's relay puts on the LMS's MIME: none when its From: domain is
    approved for the company, else the service's From with the LMS's From as Reply-To."""
    head = mime.split(raw)[0]
    given = next((mime.value(field) for key, field in mime.fields(head) if key == "from"), "")
    first = next(iter(mime.addresses(given)), "")
    if first.rpartition("@")[2].lower() in approved:
        return {}
    return {"From": service_from, "Reply-To": given if given.isascii() and given else first}


def purge_raw(job_id: int) -> int:
    """Forget the MIME of a job's messages (the retention purge): in the database, and in the
    company's storage for the large ones."""
    keys = db.session.execute(text("SELECT company_id, storage_key FROM smtp_messages WHERE job_id = :j "
                                   "AND storage_key IS NOT NULL"), {"j": job_id}).all()
    if keys:
        with open_storage(db.session.get_one(Company, keys[0].company_id)) as storage:
            for row in keys:
                storage.delete(row.storage_key)
        db.session.execute(text("UPDATE smtp_messages SET storage_key = NULL WHERE job_id = :j"), {"j": job_id})
    return rowcount(db.session.execute(
        text("UPDATE smtp_messages SET raw = NULL WHERE job_id = :j AND raw IS NOT NULL"), {"j": job_id}))
