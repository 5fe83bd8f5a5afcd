"""Taking over IOMAD's email queue (its ``local_email`` ``email`` table), doing
what IOMAD's own task would do with each row (``core.lms.iomad``).

IOMAD queues one row per message, already rendered (``varsreplaced = 1``):
``subject``, ``body`` (HTML), ``userid`` (the recipient, or -999 for the shop
administrator), ``senderid``, ``headers`` (PHP-serialised: the ``template``
object, an ``attachment`` object, ``To:``/``Cc:``/``reply-to:`` lines),
``due``, ``sent``, ``companyid`` (``0`` for site mail).

One poll of a company (``poll``):

1. Refuses while IOMAD's own ``\\local_iomad\\task\\email_cron_task`` is
   enabled (both would send the queue), unless forced (``OFFLOAD_LMS_FORCE=1``).
2. Marks the rows whose outcome we know (``core.lms.marking``), and purges
   old rows as IOMAD did when the company opted in (``iomad_purge``).
3. Reads the due rows the company takes (its IOMAD company's; with
   ``iomad_site_queue`` also those of ``companyid = 0`` and of IOMAD
   companies no company maps), oldest first, ``chunk`` at a time, at most
   ``max_rows``: ids first, then the rows not taken yet (``lms_email_rows``).
   A worker's poll reads on from the last row it read and looks at the
   whole queue again every ``FULL_SCAN_S`` (rows that became due since:
   a user unsuspended, a ``due`` passed); ``flask lms poll`` looks at all.
4. A row IOMAD cannot send fails alone with a reason (no or invalid address,
   not rendered, headers that do not decode, an attachment without a
   configured dataroot or missing from it), and is marked so IOMAD does
   not try either.
5. The good rows become one job per kind (``JOB_KINDS``) and chunk, always
   transactional (never unsubscribed): each row's recipient and its copies
   (``core.lms.iomad.Copies``), the per-row subject and bodies in each
   recipient's encrypted data. The job, its recipients, one
   ``lms_email_rows`` row per IOMAD row and one ``lms_email_copies`` row
   per copy are committed in ONE transaction: the row id is the key (unique
   per company), so a crash before the commit takes nothing, and after it
   the row and its copies are never taken again.
"""
from __future__ import annotations

import hashlib
import html as html_lib
import logging
import os
import re
import time
from dataclasses import dataclass, field

from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from core.bulk import insert_rows
from core.db import db
from core.jobs import JobError, create_job
from core.lms import iomad, marking
from core.lms.connection import DISABLE_HINT, LmsConfig, LmsError, config_for, engine_for, failure, mapped_elsewhere
from core.lms.html_text import html_to_text
from core.lms.mail_hook import ATTACHMENT_PATH, BODY_HTML, BODY_TEXT, MAX_ATTACHMENT_BYTES, SUBJECT
from core.lms.phpserial import PhpSerialError, loads
from core.models import CampaignSettings, Company, Job, LmsEmailCopy, LmsEmailRow, Recipient, utcnow
from core.models.lms import ROW_FAILED, ROW_QUEUED
from core.queue import connection, enqueue_job
from core.rendering import single_line, valid_email

log = logging.getLogger(__name__)

#: IOMAD template name → our job type. New-user and password mail is ``csv_import``
#: (user_create, user_reset, user_signup*, any name with "password"), license mail
#: ``license_allocation`` (any name with "license"/"licence"), the rest ``notification``.
JOB_KINDS = (
    ("csv_import", re.compile(r"^user_(create|reset|signup)|password", re.IGNORECASE)),
    ("license_allocation", re.compile(r"licen[cs]e", re.IGNORECASE)),
)
DEFAULT_KIND = "notification"
#: how often a worker's poll looks at the whole queue again (rows below the last one it read that became due)
FULL_SCAN_S = 60
#: a full scan reads this many chunks' worth of ids per query
FULL_SCAN_IDS = 10
PURGE_EVERY_S = 3600
_HAS_TAG = re.compile(r"<\s*[a-zA-Z][^>]*>")


class LmsRefused(LmsError):
    """The poll will not take the queue (IOMAD's own sender is on); the message says how to fix it."""


def job_type_for(templatename: str | None) -> str:
    for kind, pattern in JOB_KINDS:
        if pattern.search(templatename or ""):
            return kind
    return DEFAULT_KIND


# -- one row -------------------------------------------------------------------------
@dataclass
class Outcome:
    row_id: int
    templatename: str | None
    email: str | None = None
    data: dict | None = None
    error: str | None = None
    wanted: iomad.Wanted | None = None
    copies: list[tuple[str, str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The recipient's address (every row read without an error has one)."""
        if self.email is None:
            raise ValueError(f"row {self.row_id} has no recipient address")
        return self.email


def _headers(raw, memo: dict | None = None) -> dict:
    """The decoded headers (read-only). ``memo``: a poll's decoded headers by their text: IOMAD writes the
    same headers for every row of a template (its template object, attachment and To/Cc lines), so a
    poll decodes each once."""
    if raw in (None, ""):
        return {}
    if memo is not None and raw in memo:
        found = memo[raw]
        if isinstance(found, PhpSerialError):
            raise found
        return found
    try:
        value = loads(raw)
        if value is not None and not isinstance(value, dict):
            raise PhpSerialError("not an array")
    except PhpSerialError as exc:
        if memo is not None:
            memo[raw] = exc
        raise
    value = value or {}
    if memo is not None:
        memo[raw] = value
    return value


def _attachment(headers: dict, dataroot: str | None) -> dict | None:
    """The attachment IOMAD named (``attachment`` → filepath, filename), as a dataroot-relative path."""
    found = headers.get("attachment")
    if not found:
        return None
    if not isinstance(found, dict) or not isinstance(found.get("filepath"), str):
        raise LmsError("the attachment in the headers has no file path")
    if not dataroot:
        raise LmsError("the row has an attachment and no Moodle dataroot is configured (lms_dataroot)")
    match = ATTACHMENT_PATH.search(found["filepath"].replace("\\", "/"))
    if not match:
        raise LmsError("the attachment is not a file of Moodle's file store (filedir/..)")
    relative = match.group(0)
    path = os.path.join(dataroot, relative)
    if not os.path.isfile(path):
        raise LmsError("the attachment's file is not in the Moodle dataroot")
    if os.path.getsize(path) > MAX_ATTACHMENT_BYTES:
        raise LmsError("the attachment is larger than 10 MiB")
    name = found["filename"] if isinstance(found.get("filename"), str) else "attachment"
    return {"path": relative, "filename": single_line(name)[:200] or "attachment"}


def still_due(row, site: iomad.Site) -> bool:
    """The row is still one IOMAD would send (its user may have changed since the ids were read)."""
    if int(row.userid) == iomad.SHOP_ADMIN:
        return site.shop_admin is not None
    if row.uid is None or int(row.udeleted or 0):
        return False
    return not int(row.ususpended or 0) or row.templatename == iomad.COMPANY_SUSPENDED


def _address(row, site: iomad.Site) -> tuple[str | None, str | None]:
    if int(row.userid) == iomad.SHOP_ADMIN:
        return site.shop_admin, None
    address = (row.uemail or "").strip()
    if not address:
        return None, "the user has no email address"
    if not valid_email(address):
        return None, "the user's email address is invalid"
    return address, None


def read_row(row, dataroot: str | None, site: iomad.Site, memo: dict | None = None) -> Outcome:
    """What one IOMAD row becomes: a recipient (email, data, what its copies need) or a failure.
    ``memo``: a poll's decoded headers (``_headers``)."""
    out = Outcome(int(row.id), (row.templatename or "")[:100] or None)
    address, out.error = _address(row, site)
    if out.error:
        return out
    if int(row.varsreplaced or 0) != 1:
        out.error = "not rendered by IOMAD (varsreplaced is not 1)"
    elif not single_line(row.subject or ""):
        out.error = "the subject is empty"
    elif not (row.body or "").strip():
        out.error = "the body is empty"
    if out.error:
        return out
    try:
        headers = _headers(row.headers, memo)
        attachment = _attachment(headers, dataroot)
    except PhpSerialError as exc:
        out.error = f"the headers could not be decoded ({exc})"
        return out
    except LmsError as exc:
        out.error = str(exc)
        return out
    body = row.body
    if _HAS_TAG.search(body):
        html, plain = body, html_to_text(body)
    else:
        html, plain = "", html_lib.unescape(body)
    out.email = address
    out.data = {"lms_row": out.row_id, "lms_subject": single_line(row.subject), "lms_text": plain, "lms_html": html}
    reply_to = iomad.reply_to(row, headers, site)
    if reply_to:
        out.data["reply_to"] = reply_to
    if attachment:
        out.data["attachment"] = attachment
    out.wanted = iomad.wanted(row, headers, memo)
    return out


# -- a poll ----------------------------------------------------------------------------
@dataclass
class PollResult:
    taken: int = 0
    copies: int = 0
    jobs: int = 0
    failed: int = 0
    already_taken: int = 0
    marked: int = 0
    purged: int = 0
    job_ids: list[int] = field(default_factory=list)
    #: the poll stopped at ``max_rows`` with due rows left: the next poll need not wait for its slot
    backlog: bool = False

    def lines(self) -> dict:
        return {"taken": self.taken, "copies": self.copies, "jobs": self.jobs, "failed": self.failed,
                "already_taken": self.already_taken, "marked": self.marked, "purged": self.purged,
                "job_ids": ",".join(map(str, self.job_ids)) or "-", "backlog": "yes" if self.backlog else "no"}


def scope_of(cfg: LmsConfig) -> iomad.Scope:
    return iomad.Scope(cfg.iomad_company_id, cfg.site_queue, mapped_elsewhere(cfg) if cfg.site_queue else ())


def poll(company: Company, *, force: bool, chunk: int, max_rows: int, now: int | None = None,
         full: bool = True) -> PollResult:
    """One poll of the company's IOMAD email queue (see the module's docstring); ``full``: from the
    first row (else on from the last row the previous poll read, and fully every ``FULL_SCAN_S``)."""
    cfg = config_for(company)
    cfg.require(own_company=not cfg.site_queue)
    if not cfg.email_queue:
        raise LmsError("taking over IOMAD's email queue is off for the company (iomad_email_queue)")
    result = PollResult()
    moment = int(now if now is not None else time.time())
    scope = scope_of(cfg)
    engine = engine_for(cfg.db_url, read_only=False)
    try:
        with engine.connect() as conn:
            site = iomad.read_site(conn, cfg)
            if site.task_enabled and not force:
                raise LmsRefused(f"IOMAD's own email task is enabled and would send the same queue: {DISABLE_HINT}")
            result.marked += marking.mark_finished(company.id, cfg, conn)
            result.purged = _purge(company.id, cfg, conn, scope, moment)
            _scan(company.id, cfg, conn, scope, site, moment, chunk, max_rows, full, result)
            result.marked += marking.mark_finished(company.id, cfg, conn)
    except SQLAlchemyError as exc:
        raise failure("could not be read", exc) from None
    return result


def _scan(company_id, cfg, conn, scope, site, moment, chunk, max_rows, full, result) -> None:
    """Read the due rows from the cursor on and take the fresh ones. A full scan reads ids first, many at a
    time (rows taken by an earlier poll and not yet marked are skipped unread); reading on, the rows are
    new: read whole at once."""
    cursor = ScanCursor(company_id, full, cfg)
    after, scanned = cursor.start, 0
    ids_sql = text(iomad.due_ids_sql(cfg, scope, site, chunk * FULL_SCAN_IDS))
    due_rows_sql = text(iomad.due_rows_sql(cfg, scope, site, chunk))
    rows_sql = text(iomad.rows_sql(cfg)).bindparams(bindparam("ids", expanding=True))
    copies = iomad.Copies(conn, cfg, site)
    complete = False
    while scanned < max_rows:
        params = {"now": moment, "after": after}
        if cursor.full:
            ids = list(conn.execute(ids_sql, params).scalars())
            fresh = _fresh(company_id, ids, result) if ids else []
            rows = [r for start in range(0, len(fresh), chunk)
                    for r in conn.execute(rows_sql, {"ids": fresh[start:start + chunk]}).all()]
            complete = len(ids) < chunk * FULL_SCAN_IDS
        else:
            rows = conn.execute(due_rows_sql, params).all()
            ids = [int(r.id) for r in rows]
            kept = set(_fresh(company_id, ids, result)) if ids else set()
            rows = [r for r in rows if int(r.id) in kept]
            complete = len(ids) < chunk
        if not ids:
            break
        scanned += len(ids)
        after = int(ids[-1])
        rows = [r for r in rows if still_due(r, site) and scope.takes(int(r.companyid))]
        for start in range(0, len(rows), chunk):
            _take(company_id, cfg, rows[start:start + chunk], site, copies, result)
        if complete:
            break
    result.backlog = scanned >= max_rows and not complete
    cursor.save(after)


class ScanCursor:
    """Where a worker's poll of a company reads on from (Redis; lost, it reads everything again), for
    the LMS database and prefix it has now."""

    def __init__(self, company_id: int, full: bool, cfg: LmsConfig):
        lms = hashlib.sha256(f"{cfg.url}|{cfg.prefix}".encode()).hexdigest()[:16]
        self.key = f"offload:lms-scan:{company_id}:{lms}"
        self.redis = connection()
        saved = self.redis.hgetall(self.key)
        last_full = float(saved.get(b"full_at", 0) or 0)
        self.full = full or time.time() - last_full >= FULL_SCAN_S
        self.start = 0 if self.full else int(saved.get(b"after", 0) or 0)

    def save(self, after: int) -> None:
        self.redis.hset(self.key, mapping={"after": after, "full_at": time.time()} if self.full else {"after": after})
        self.redis.expire(self.key, 7 * 86400)


def _purge(company_id: int, cfg: LmsConfig, conn, scope: iomad.Scope, moment: int) -> int:
    """IOMAD's purge of old rows, at most once an hour, for a company that opted in (``iomad_purge``)."""
    if not cfg.purge:
        return 0
    row = db.session.execute(CampaignSettings.scoped(company_id)).scalar_one()
    last = row.iomad_purged_at
    if last is not None and (utcnow() - last).total_seconds() < PURGE_EVERY_S:
        db.session.rollback()
        return 0
    res = conn.execute(text(iomad.purge_sql(cfg, scope)), {"before": moment - iomad.PURGE_AGE_S, "now": moment})
    row.iomad_purged_at = utcnow()
    db.session.commit()
    if res.rowcount:
        log.info("Company %s: purged %s IOMAD email rows older than 180 days", company_id, res.rowcount)
    return res.rowcount


def _fresh(company_id: int, ids: list[int], result: PollResult) -> list[int]:
    """The row ids not taken yet (the others count as ``already_taken``)."""
    known = set(db.session.execute(select(LmsEmailRow.lms_row_id).where(
        LmsEmailRow.company_id == company_id, LmsEmailRow.lms_row_id.between(min(ids), max(ids)))).scalars())
    db.session.rollback()
    result.already_taken += sum(1 for i in ids if i in known)
    return [int(i) for i in ids if i not in known]


def _take(company_id: int, cfg: LmsConfig, rows, site: iomad.Site, copies: iomad.Copies,
          result: PollResult) -> None:
    outcomes = [read_row(r, cfg.dataroot, site, copies.memo) for r in rows]
    bad = [o for o in outcomes if o.error]
    if bad:
        now = utcnow()
        db.session.execute(insert(LmsEmailRow.__table__), [
            {"company_id": company_id, "lms_row_id": o.row_id, "templatename": o.templatename, "status": ROW_FAILED,
             "error": (o.error or "")[:500], "created_at": now} for o in bad])
        _commit_rows()
        result.failed += len(bad)
    good = [o for o in outcomes if not o.error]
    found = copies.resolve(o.wanted for o in good if o.wanted is not None)  # every good row has it
    groups: dict[str, list[Outcome]] = {}
    for o in good:
        seen = {o.address.lower()}
        for address, kind in found.get(o.row_id, []):
            if address.lower() not in seen:  # one message per address and row
                seen.add(address.lower())
                o.copies.append((address, kind))
        groups.setdefault(job_type_for(o.templatename), []).append(o)
    for kind, members in groups.items():
        job = _make_job(company_id, kind, members)
        enqueue_job(job)
        result.jobs += 1
        result.taken += len(members)
        result.copies += sum(len(o.copies) for o in members)
        result.job_ids.append(job.id)


def _commit_rows() -> None:
    try:
        db.session.commit()
    except IntegrityError:  # another poll of the company took these rows first
        db.session.rollback()
        raise LmsError("another poll of this company is taking the same rows; stopped this one") from None


def _make_job(company_id: int, kind: str, members: list[Outcome]) -> Job:
    order: list[tuple[Outcome, str, str | None]] = []
    for o in members:
        order.append((o, o.address, None))
        order += [(o, address, copy_kind) for address, copy_kind in o.copies]
    payload = {"type": kind, "priority": "transactional", "subject": SUBJECT, "body_text": BODY_TEXT,
               "body_html": BODY_HTML, "on_missing": "fail_recipient",
               "recipients": [{"email": email, "data": o.data} for o, email, _ in order]}

    def link(job: Job) -> None:
        """In the job's own transaction: the lms_email_rows and lms_email_copies rows, tied to recipients."""
        found = db.session.execute(select(Recipient.id, Recipient.email).where(Recipient.job_id == job.id)
                                   .order_by(Recipient.id)).all()
        if len(found) != len(order) or any(f.email != email for f, (_, email, _k) in zip(found, order, strict=True)):
            raise RuntimeError(f"job {job.id}: recipients do not line up with the IOMAD rows")
        now = utcnow()
        pairs = list(zip(found, order, strict=True))
        insert_rows(LmsEmailRow.__table__, [
            {"company_id": company_id, "lms_row_id": o.row_id, "templatename": o.templatename, "job_id": job.id,
             "recipient_id": f.id, "status": ROW_QUEUED, "created_at": now} for f, (o, _, k) in pairs if k is None])
        copied = [(f, o, email, k) for f, (o, email, k) in pairs if k is not None]
        if copied:
            ours = dict(db.session.execute(select(LmsEmailRow.lms_row_id, LmsEmailRow.id).where(
                LmsEmailRow.job_id == job.id)).all())
            insert_rows(LmsEmailCopy.__table__, [
                {"company_id": company_id, "row_id": ours[o.row_id], "recipient_id": f.id, "email": email[:320],
                 "kind": k} for f, o, email, k in copied])

    try:
        job, _created = create_job(company_id, payload, source="lms", before_commit=link,
                                   max_recipients=len(order), distinct=False)
    except IntegrityError:
        db.session.rollback()
        raise LmsError("another poll of this company is taking the same rows; stopped this one") from None
    except JobError as exc:  # the fixed template cannot fail; a bug if it does
        db.session.rollback()
        raise LmsError(f"could not make a job ({exc.code})") from None
    return job
