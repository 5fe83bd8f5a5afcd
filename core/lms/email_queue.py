"""Taking over IOMAD's email queue (its ``local_email`` plugin's ``email`` table).

IOMAD queues one row per message, already rendered (``varsreplaced = 1``):
``subject``, ``body`` (HTML), ``userid`` (the recipient), ``senderid``,
``headers`` (PHP-serialised: ``To:``/``Cc:``/``reply-to:`` lines and an
``attachment`` object with a dataroot ``filepath``), ``due``, ``sent``.

One poll of a company (``poll``):

1. Refuses while IOMAD's own ``\\local_iomad\\task\\email_cron_task`` is
   enabled (both would send the queue), unless forced (``OFFLOAD_LMS_FORCE=1``).
2. Marks the rows whose outcome we know (``mark_finished``, below).
3. Reads the IOMAD company's due rows (``sent IS NULL AND due <= now``),
   oldest (lowest id) first, ``chunk`` at a time, at most ``max_rows``.
   Rows we already hold (``lms_email_rows``) are skipped: they were taken by
   an earlier poll whose Moodle update has not happened yet.
4. Each bad row fails alone with a reason (unknown, deleted or suspended
   user, no or invalid address, not rendered, headers that do not decode,
   an attachment without a configured dataroot or missing from it).
5. The good rows become jobs by kind (``JOB_KINDS``), the per-row subject
   and bodies in each recipient's encrypted data. A job never holds two
   rows for the same address (our duplicate check would fail the second),
   so such rows go to the next job of that kind. The job, its recipients
   and one ``lms_email_rows`` row per IOMAD row are committed in ONE
   transaction: the row id is the idempotency key (unique per company), so
   a crash before the commit takes nothing, and after it the row is never
   taken again.

Marking (``mark_finished``), after the provider answered: a row whose
recipient was ``sent`` gets ``sent`` = the time the provider accepted it
(our ``recipients.sent_at``); a row that failed for good (refused at
take-over, failed, bounced, suppressed, cancelled) gets ``sent`` = the time
we gave up, so IOMAD never resends it, and ``lms_email_rows`` keeps the
reason (``status = failed``, ``error``). The Moodle update is guarded by
``sent IS NULL`` and ours comes after it, so a crash between them only
repeats an update that changes nothing. It runs after each batch of an LMS
job (``tasks.lms.mark_rows``) and at every poll.
"""
from __future__ import annotations

import html as html_lib
import logging
import mimetypes
import os
import re
from dataclasses import dataclass, field
from datetime import UTC
from html.parser import HTMLParser

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from core.db import db
from core.jobs import JobError, create_job
from core.lms.connection import (DISABLE_HINT, LmsConfig, LmsError, config_for, failure, iomad_task_enabled,
                                      open_engine)
from core.models.lms import ROW_FAILED, ROW_QUEUED, ROW_SENT, LmsEmailRow
from core.lms.phpserial import PhpSerialError, loads
from core.models import R_SENT, RECIPIENT_FINAL, Company, Job, Recipient, utcnow
from core.rendering import RenderError, single_line, valid_email
from providers.base import Attachment
from core.queue import enqueue_job

log = logging.getLogger(__name__)

#: IOMAD template name → our job type. New-user and password mail is ``csv_import``
#: (user_create, user_reset, user_signup*, any name with "password"), license mail
#: ``license_allocation`` (any name with "license"/"licence"), the rest ``notification``.
JOB_KINDS = (
    ("csv_import", re.compile(r"^user_(create|reset|signup)|password", re.IGNORECASE)),
    ("license_allocation", re.compile(r"licen[cs]e", re.IGNORECASE)),
)
DEFAULT_KIND = "notification"
#: the one template of every LMS job: each recipient's data carries its own rendered row
SUBJECT, BODY_TEXT, BODY_HTML = "{{ lms_subject }}", "{{ lms_text }}", "{{ lms_html | safe }}"
ATTACHMENT_PATH = re.compile(r"filedir/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{40}$")
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
#: our recipient statuses that mark the Moodle row failed (every final one but sent)
FINAL_FAILED = RECIPIENT_FINAL - {R_SENT}
MARK_CHUNK = 2000
_HAS_TAG = re.compile(r"<\s*[a-zA-Z][^>]*>")


class LmsRefused(LmsError):
    """The poll will not take the queue (IOMAD's own sender is on); the message says how to fix it."""


def job_type_for(templatename: str | None) -> str:
    for kind, pattern in JOB_KINDS:
        if pattern.search(templatename or ""):
            return kind
    return DEFAULT_KIND


# -- HTML → text -------------------------------------------------------------------
class _Text(HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script", "head"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")
        if tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag):
        if tag in ("style", "script", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in ("p", "div", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append("\n")
        if tag == "a" and self.href:
            if self.href.startswith(("http://", "https://", "mailto:")):
                self.out.append(f" ({self.href})")
            self.href = None

    def handle_data(self, data):
        if not self.skip:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(body: str) -> str:
    """A readable text part from an HTML body: blocks become lines, links keep their address."""
    parser = _Text()
    parser.feed(body)
    parser.close()
    lines = [line.strip() for line in "".join(parser.out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


# -- one row -------------------------------------------------------------------------
@dataclass
class Outcome:
    row_id: int
    templatename: str | None
    email: str | None = None
    data: dict | None = None
    error: str | None = None


def _headers(raw) -> dict:
    if raw in (None, ""):
        return {}
    value = loads(raw)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PhpSerialError("not an array")
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
    name = found.get("filename") if isinstance(found.get("filename"), str) else "attachment"
    return {"path": relative, "filename": single_line(name)[:200] or "attachment"}


def _reply_to(row, headers: dict) -> str | None:
    """The row's sender user's address, else a ``reply-to:`` line of the headers."""
    sender = (row.semail or "").strip()
    if sender and not row.sdeleted and valid_email(sender):
        return sender
    for value in headers.values():
        if isinstance(value, str) and value.lower().startswith("reply-to:"):
            address = value.split(":", 1)[1].strip()
            if valid_email(address):
                return address
    return None


def read_row(row, dataroot: str | None) -> Outcome:
    """What one IOMAD row becomes: a recipient (email, data) or a failure with its reason."""
    out = Outcome(int(row.id), (row.templatename or "")[:100] or None)
    if row.uid is None:
        out.error = f"unknown user (userid {row.userid})"
    elif int(row.udeleted or 0):
        out.error = "the user is deleted"
    elif int(row.ususpended or 0):
        out.error = "the user is suspended"
    elif not (row.uemail or "").strip():
        out.error = "the user has no email address"
    elif not valid_email(row.uemail.strip()):
        out.error = "the user's email address is invalid"
    elif int(row.varsreplaced or 0) != 1:
        out.error = "not rendered by IOMAD (varsreplaced is not 1)"
    elif not single_line(row.subject or ""):
        out.error = "the subject is empty"
    elif not (row.body or "").strip():
        out.error = "the body is empty"
    if out.error:
        return out
    try:
        headers = _headers(row.headers)
    except PhpSerialError as exc:
        out.error = f"the headers could not be decoded ({exc})"
        return out
    try:
        attachment = _attachment(headers, dataroot)
    except LmsError as exc:
        out.error = str(exc)
        return out
    body = row.body
    if _HAS_TAG.search(body):
        html, plain = body, html_to_text(body)
    else:
        html, plain = "", html_lib.unescape(body)
    out.email = row.uemail.strip()
    out.data = {"lms_row": out.row_id, "lms_subject": single_line(row.subject), "lms_text": plain, "lms_html": html}
    reply_to = _reply_to(row, headers)
    if reply_to:
        out.data["reply_to"] = reply_to
    if attachment:
        out.data["attachment"] = attachment
    return out


# -- a poll ----------------------------------------------------------------------------
@dataclass
class PollResult:
    taken: int = 0
    jobs: int = 0
    failed: int = 0
    already_taken: int = 0
    marked: int = 0
    job_ids: list[int] = field(default_factory=list)

    def lines(self) -> dict:
        return {"taken": self.taken, "jobs": self.jobs, "failed": self.failed, "already_taken": self.already_taken,
                "marked": self.marked, "job_ids": ",".join(map(str, self.job_ids)) or "-"}


def _due_ids_sql(cfg: LmsConfig, limit: int) -> str:
    return (f"SELECT e.id FROM {cfg.table('email')} e WHERE e.companyid = :company AND e.sent IS NULL "
            f"AND e.due <= :now AND e.id > :after ORDER BY e.id LIMIT {int(limit)}")


def _rows_sql(cfg: LmsConfig) -> str:
    return (f"SELECT e.id, e.templatename, e.subject, e.body, e.varsreplaced, e.userid, e.headers, "
            f"u.id AS uid, u.email AS uemail, u.deleted AS udeleted, u.suspended AS ususpended, "
            f"s.email AS semail, s.deleted AS sdeleted "
            f"FROM {cfg.table('email')} e LEFT JOIN {cfg.table('user')} u ON u.id = e.userid "
            f"LEFT JOIN {cfg.table('user')} s ON s.id = e.senderid "
            f"WHERE e.companyid = :company AND e.sent IS NULL AND e.id IN :ids ORDER BY e.id")


def poll(company: Company, *, force: bool, chunk: int, max_rows: int, now: int | None = None) -> PollResult:
    """One poll of the company's IOMAD email queue (see the module's docstring)."""
    cfg = config_for(company)
    cfg.require()
    if not cfg.email_queue:
        raise LmsError("taking over IOMAD's email queue is off for the company (iomad_email_queue)")
    result = PollResult()
    engine = open_engine(cfg.url, read_only=False)
    try:
        try:
            with engine.connect() as conn:
                enabled = iomad_task_enabled(conn, cfg)
        except SQLAlchemyError as exc:
            raise failure("could not be read", exc) from None
        if enabled and not force:
            raise LmsRefused(f"IOMAD's own email task is enabled and would send the same queue: {DISABLE_HINT}")
        result.marked += mark_finished(company.id, cfg, engine)
        moment = int(now if now is not None else utcnow().timestamp())
        after, scanned = 0, 0
        ids_sql = text(_due_ids_sql(cfg, chunk))
        rows_sql = text(_rows_sql(cfg)).bindparams(bindparam("ids", expanding=True))
        # ids first (cheap): rows taken by an earlier poll and not yet marked are skipped unread
        while scanned < max_rows:
            try:
                with engine.connect() as conn:
                    ids = list(conn.execute(ids_sql, {"company": cfg.iomad_company_id, "now": moment,
                                                      "after": after}).scalars())
                    scanned += len(ids)
                    fresh = _fresh(company.id, ids, result)
                    rows = conn.execute(rows_sql, {"company": cfg.iomad_company_id, "ids": fresh}).all() \
                        if fresh else []
            except SQLAlchemyError as exc:
                raise failure("could not be read", exc) from None
            if not ids:
                break
            after = int(ids[-1])
            if rows:
                _take(company.id, cfg, rows, result)
            if len(ids) < chunk:
                break
        result.marked += mark_finished(company.id, cfg, engine)
    finally:
        engine.dispose()
    return result


def _fresh(company_id: int, ids: list[int], result: PollResult) -> list[int]:
    """The row ids not taken yet (the others count as ``already_taken``)."""
    if not ids:
        return []
    known = set(db.session.execute(select(LmsEmailRow.lms_row_id).where(
        LmsEmailRow.company_id == company_id, LmsEmailRow.lms_row_id.between(min(ids), max(ids)))).scalars())
    db.session.rollback()
    result.already_taken += sum(1 for i in ids if i in known)
    return [int(i) for i in ids if i not in known]


def _take(company_id: int, cfg: LmsConfig, rows, result: PollResult) -> None:
    outcomes = [read_row(r, cfg.dataroot) for r in rows]
    bad = [o for o in outcomes if o.error]
    if bad:
        now = utcnow()
        db.session.execute(insert(LmsEmailRow.__table__), [
            {"company_id": company_id, "lms_row_id": o.row_id, "templatename": o.templatename, "status": ROW_FAILED,
             "error": o.error[:500], "created_at": now} for o in bad])
        _commit_rows()
        result.failed += len(bad)
    groups: dict[str, list[tuple[list[Outcome], set[str]]]] = {}
    for o in outcomes:
        if o.error:
            continue
        lists = groups.setdefault(job_type_for(o.templatename), [])
        address = o.email.lower()
        for members, addresses in lists:  # the first job of the kind without this address
            if address not in addresses:
                members.append(o)
                addresses.add(address)
                break
        else:
            lists.append(([o], {address}))
    for kind, lists in groups.items():
        for members, _addresses in lists:
            job = _make_job(company_id, kind, members)
            enqueue_job(job)
            result.jobs += 1
            result.taken += len(members)
            result.job_ids.append(job.id)


def _commit_rows() -> None:
    try:
        db.session.commit()
    except IntegrityError:  # another poll of the company took these rows first
        db.session.rollback()
        raise LmsError("another poll of this company is taking the same rows; stopped this one") from None


def _make_job(company_id: int, kind: str, members: list[Outcome]) -> Job:
    payload = {"type": kind, "subject": SUBJECT, "body_text": BODY_TEXT, "body_html": BODY_HTML,
               "recipients": [{"email": o.email, "data": o.data} for o in members]}

    def link(job: Job) -> None:
        """In the job's own transaction: one lms_email_rows row per IOMAD row, tied to its recipient."""
        found = db.session.execute(select(Recipient.id, Recipient.email).where(Recipient.job_id == job.id)
                                   .order_by(Recipient.id)).all()
        if len(found) != len(members) or any(f.email != o.email for f, o in zip(found, members, strict=True)):
            raise RuntimeError(f"job {job.id}: recipients do not line up with the IOMAD rows")
        now = utcnow()
        pairs = zip(found, members, strict=True)
        db.session.execute(insert(LmsEmailRow.__table__), [
            {"company_id": company_id, "lms_row_id": o.row_id, "templatename": o.templatename, "job_id": job.id,
             "recipient_id": f.id, "status": ROW_QUEUED, "created_at": now} for f, o in pairs])

    try:
        job, _created = create_job(company_id, payload, source="lms", before_commit=link,
                                   max_recipients=len(members))
    except IntegrityError:
        db.session.rollback()
        raise LmsError("another poll of this company is taking the same rows; stopped this one") from None
    except JobError as exc:  # the fixed template cannot fail; a bug if it does
        db.session.rollback()
        raise LmsError(f"could not make a job ({exc.code})") from None
    return job


# -- marking Moodle rows ----------------------------------------------------------------
def mark_finished(company_id: int, cfg: LmsConfig, engine=None) -> int:
    """Write ``sent`` on the Moodle rows whose outcome is known; returns how many were marked."""
    own = engine is None
    engine = engine or open_engine(cfg.url, read_only=False)
    total = 0
    try:
        while True:
            r_, rc = LmsEmailRow.__table__, Recipient.__table__
            rows = db.session.execute(
                select(r_.c.id, r_.c.lms_row_id, r_.c.status, r_.c.error, r_.c.recipient_id,
                       rc.c.status.label("rstatus"), rc.c.error.label("rerror"), rc.c.sent_at)
                .select_from(r_.outerjoin(rc, rc.c.id == r_.c.recipient_id))
                .where(r_.c.company_id == company_id, r_.c.marked_at.is_(None))
                .order_by(r_.c.id).limit(MARK_CHUNK)).all()
            db.session.rollback()
            now = utcnow()
            stamp = int(now.timestamp())
            done = []  # (our id, lms row id, status, error, sent time)
            for r in rows:
                if r.status == ROW_FAILED:
                    done.append((r.id, r.lms_row_id, ROW_FAILED, r.error, stamp))
                elif r.recipient_id is None:
                    done.append((r.id, r.lms_row_id, ROW_FAILED, "the job was deleted before sending", stamp))
                elif r.rstatus == R_SENT:
                    sent = int(_utc_timestamp(r.sent_at)) if r.sent_at else stamp
                    done.append((r.id, r.lms_row_id, ROW_SENT, None, sent))
                elif r.rstatus in FINAL_FAILED:
                    done.append((r.id, r.lms_row_id, ROW_FAILED, (r.rerror or r.rstatus)[:500], stamp))
            if done:
                _mark_moodle(cfg, engine, done, stamp)
                db.session.execute(update(LmsEmailRow.__table__).where(
                    LmsEmailRow.__table__.c.id == bindparam("rid")).values(
                    status=bindparam("st"), error=bindparam("err"), sent_time=bindparam("t"), marked_at=now),
                    [{"rid": d[0], "st": d[2], "err": d[3], "t": d[4]} for d in done])
                db.session.commit()
                total += len(done)
            if len(rows) < MARK_CHUNK:
                return total
            if not done:  # a full page of rows still in flight: the next mark gets them
                return total
    finally:
        if own:
            engine.dispose()


def _utc_timestamp(moment) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def _mark_moodle(cfg: LmsConfig, engine, done: list[tuple], stamp: int) -> None:
    """One UPDATE per distinct ``sent`` value (rows accepted in the same second share one)."""
    by_time: dict[int, list[int]] = {}
    for _rid, row_id, _status, _error, sent in done:
        by_time.setdefault(sent, []).append(int(row_id))
    stmt = text(f"UPDATE {cfg.table('email')} SET sent = :sent, modifiedtime = :now "
                "WHERE companyid = :company AND sent IS NULL AND id IN :ids").bindparams(
        bindparam("ids", expanding=True))
    try:
        with engine.begin() as conn:
            for sent, ids in by_time.items():
                for start in range(0, len(ids), 1000):
                    conn.execute(stmt, {"sent": sent, "now": stamp, "company": cfg.iomad_company_id,
                                        "ids": ids[start:start + 1000]})
    except SQLAlchemyError as exc:
        raise failure("could not be updated", exc) from None


# -- the sending hook ----------------------------------------------------------------------
class LmsMail:
    """What ``BatchRun.build`` adds to an LMS job's messages: Reply-To, the attachment,
    no empty HTML part for rows IOMAD wrote as plain text."""

    def __init__(self, job: Job):
        row = db.session.execute(select(Company).where(Company.id == job.company_id)).scalar_one()
        self.dataroot = config_for(row).dataroot

    def headers(self, data: dict | None) -> dict[str, str]:
        reply_to = (data or {}).get("reply_to")
        return {"Reply-To": reply_to} if reply_to and valid_email(reply_to) else {}

    def attachments(self, data: dict | None) -> list[Attachment]:
        found = (data or {}).get("attachment")
        if not found:
            return []
        if not self.dataroot:
            raise RenderError("attachment", "no Moodle dataroot is configured (lms_dataroot)")
        relative = str(found.get("path", ""))
        if not ATTACHMENT_PATH.fullmatch(relative):
            raise RenderError("attachment", "not a file of Moodle's file store")
        try:
            with open(os.path.join(self.dataroot, relative), "rb") as fh:
                content = fh.read(MAX_ATTACHMENT_BYTES + 1)
        except OSError as exc:
            raise RenderError("attachment", f"cannot be read from the Moodle dataroot ({type(exc).__name__})") \
                from None
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise RenderError("attachment", "larger than 10 MiB")
        return [Attachment(found.get("filename") or "attachment", content, _content_type(found.get("filename")))]

    @staticmethod
    def adjust(rendered):
        if rendered.html is not None and not rendered.html.strip():
            rendered.html = None
        return rendered


def _content_type(name: str | None) -> str:
    return mimetypes.guess_type(name or "")[0] or "application/octet-stream"


def mail_for(job: Job) -> LmsMail | None:
    """The sending hook of a job made from IOMAD's queue; ``None`` for other jobs."""
    return LmsMail(job) if job.source == "lms" and job.type != "certificate" else None
