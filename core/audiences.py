"""Who a campaign goes to: an uploaded CSV list, or the LMS users inactive for
N days read (read-only) from the company's Moodle/IOMAD database
(PostgreSQL or MySQL/MariaDB, ``core.lms.connection``).

Uploaded lists may hold passwords: they stay in memory and, between the
upload and the confirm step, encrypted in Redis for an hour
(``UploadStore``); nothing is written to disk or logs.
"""
from __future__ import annotations

import csv
import io
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import cast

from redis import Redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from core import crypto
from core import fields as fields_of
from core.db import db
from core.lms import connection as lms_connection
from core.models import CampaignSettings, Company
from core.queue import as_text
from core.rendering import CompiledTemplate, RenderError, valid_email

UPLOAD_TTL_S = 3600
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MASK = "••••"
#: fields whose values the preview never shows (passwords, licence codes, tokens)
SECRET_FIELD = re.compile(r"pass|pwd|secret|token|licen[cs]e|code|key", re.IGNORECASE)
PREFIX_RE = lms_connection.PREFIX_RE


class AudienceError(ValueError):
    """The audience cannot be built; the message says why (never a secret)."""


# -- uploaded lists -------------------------------------------------------------
@dataclass
class Upload:
    """A parsed CSV: its columns and rows as (line number, values)."""

    company_id: int
    user_id: int
    filename: str
    columns: list[str]
    rows: list[tuple[int, list[str]]]
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, reason) found while parsing
    id: str = ""


@dataclass
class Audience:
    """Recipients for ``create_job`` and the rows left out, with reasons."""

    recipients: list[dict]
    bad_rows: list[tuple[int, str]]


def parse_csv(raw: bytes, *, company_id: int, user_id: int, filename: str, max_rows: int) -> Upload:
    """Parse an uploaded CSV (UTF-8, header row first; comma, semicolon or tab)."""
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AudienceError("the file is not UTF-8 text") from None
    first = content.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise AudienceError("the file is empty") from None
    if not any(header) or len(set(header)) != len(header):
        raise AudienceError("the first line must name each column once")
    upload = Upload(company_id, user_id, filename[:200], header, [])
    line = reader.line_num
    try:
        for values in reader:
            start, line = line + 1, reader.line_num
            if not any(v.strip() for v in values):
                continue  # blank line
            if len(values) != len(header):
                upload.problems.append((start, f"expected {len(header)} columns, found {len(values)}"))
                continue
            upload.rows.append((start, values))
            if len(upload.rows) > max_rows:
                raise AudienceError(f"at most {max_rows} rows per upload")
    except csv.Error as exc:
        raise AudienceError(f"line {reader.line_num}: {exc}") from None
    if not upload.rows and not upload.problems:
        raise AudienceError("the file has no rows below its header")
    return upload


def default_mapping(columns: list[str], fields: list[str]) -> dict:
    """Email column and field → column guesses by name (case-insensitive)."""
    lower = {c.lower(): c for c in columns}
    email = lower.get("email") or next((c for c in columns if "mail" in c.lower()), columns[0])
    return {"email": email, "fields": {f: lower.get(f.lower(), "") for f in fields}}


def build_audience(upload: Upload, mapping: dict) -> Audience:
    """Recipients from the rows under ``mapping``; bad rows (line, reason) are left out."""
    columns = {c: i for i, c in enumerate(upload.columns)}
    if mapping.get("email") not in columns:
        raise AudienceError("choose the column that holds the email address")
    fields = {f: columns[c] for f, c in (mapping.get("fields") or {}).items() if c in columns}
    # a field no column fills is absent, never blank: the template's default applies, or the job is refused
    bad = list(upload.problems)
    seen: dict[str, int] = {}
    recipients = []
    for line, values in upload.rows:
        email = values[columns[mapping["email"]]].strip()
        if not email:
            bad.append((line, "no email address"))
        elif not valid_email(email):
            bad.append((line, "invalid email address"))
        elif email.lower() in seen:
            bad.append((line, f"duplicate of line {seen[email.lower()]}"))
        else:
            seen[email.lower()] = line
            recipients.append({"email": email, "data": {f: values[i] for f, i in fields.items()}})
    return Audience(recipients, sorted(bad))


def template_fields(subject: str | None, body_text: str | None, body_html: str | None) -> list[str]:
    """The variables a template's subject and bodies use, sorted (the renderer compiles it)."""
    try:
        return sorted(CompiledTemplate(subject or "", body_text, body_html).variables)
    except RenderError:  # a broken template: create_job reports it properly
        return []


def template_required(subject: str | None, body_text: str | None, body_html: str | None) -> tuple[str, ...]:
    """The variables a template uses without a default: each message needs a value for them."""
    try:
        return CompiledTemplate(subject or "", body_text, body_html).required
    except RenderError:
        return ()


def lacking_rows(job_type: str, required: tuple[str, ...], recipients: list[dict]) -> dict[str, list[str]]:
    """Address → the fields its row leaves blank or out (``core.fields.missing``): such a row is not sent."""
    bulk = job_type == "reengagement"
    found = {}
    for rcpt in recipients:
        lacking = fields_of.missing(job_type, required, rcpt["data"], bulk=bulk)
        if lacking:
            found[rcpt["email"]] = lacking
    return found


def masked(data: dict) -> dict:
    """``data`` with secret-looking fields replaced by ``MASK`` (for previews)."""
    return {k: (MASK if SECRET_FIELD.search(k) and v not in (None, "") else v) for k, v in (data or {}).items()}


class BufferFull(AudienceError):
    """Every company's pending uploads together fill the service's share of Redis; ``retry_after``:
    seconds until the oldest of them expires."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


#: every pending upload of every company: member ``<id>:<bytes>``, score its expiry (the global cap)
ALL_UPLOADS = "offload:uploads:all"


class UploadStore:
    """Uploads between the upload and confirm steps: encrypted in Redis, one hour.

    Redis runs ``noeviction``: pending uploads are capped per user and per
    company (``OFFLOAD_MAX_UPLOADS_PER_USER`` / ``_PER_COMPANY``), and all of
    them together by their stored size (``OFFLOAD_MAX_UPLOAD_BYTES``, for
    every company: a ``BufferFull`` past it, so queued work keeps its memory);
    a confirmed or expired upload frees its place."""

    def __init__(self, conn: Redis, max_per_user: int = 5, max_per_company: int = 20,
                 max_bytes: int | None = None):
        self.conn = conn
        self.max_per_user, self.max_per_company = max_per_user, max_per_company
        self.max_bytes = max_bytes

    def _reserve_bytes(self, upload_id: str, size: int) -> None:
        """Count ``size`` bytes against the global cap; ``BufferFull`` when they do not fit."""
        now = time.time()
        self.conn.zremrangebyscore(ALL_UPLOADS, "-inf", now)
        if self.max_bytes is not None:
            # (member, score) pairs: redis-py types a client's answers for its async flavour too
            pending = cast(list[tuple[bytes, float]], self.conn.zrange(ALL_UPLOADS, 0, -1, withscores=True))
            used = sum(int(member.rsplit(b":", 1)[1]) for member, _ in pending)
            if used + size > self.max_bytes:
                wait = int(min((score for _, score in pending), default=now + 60) - now) + 1
                raise BufferFull("the service holds as many uploads as it can right now: try again later, "
                                 "or confirm or cancel a pending upload", retry_after=max(1, min(wait, 3600)))
        self.conn.zadd(ALL_UPLOADS, {f"{upload_id}:{size}": now + UPLOAD_TTL_S})
        self.conn.expire(ALL_UPLOADS, UPLOAD_TTL_S)

    @staticmethod
    def _pending_keys(upload: Upload) -> tuple[str, str]:
        return f"offload:uploads:user:{upload.user_id}", f"offload:uploads:company:{upload.company_id}"

    def _reserve(self, upload: Upload) -> None:
        """Count this upload against both caps; ``AudienceError`` when either is full."""
        now = time.time()
        for key, cap, who in zip(self._pending_keys(upload), (self.max_per_user, self.max_per_company),
                                 ("you have", "the company has"), strict=True):
            self.conn.zremrangebyscore(key, "-inf", now)
            if self.conn.zcard(key) >= cap:
                raise AudienceError(f"{who} {cap} uploads waiting for review: confirm or cancel one, "
                                    "or wait for them to expire (an hour)")
        for key in self._pending_keys(upload):
            self.conn.zadd(key, {upload.id: now + UPLOAD_TTL_S})
            self.conn.expire(key, UPLOAD_TTL_S)

    @staticmethod
    def key(upload_id: str) -> str:
        return f"offload:upload:{upload_id}"

    def save(self, upload: Upload) -> str:
        upload.id = secrets.token_urlsafe(18)
        doc = {"company_id": upload.company_id, "user_id": upload.user_id, "filename": upload.filename,
               "columns": upload.columns, "rows": upload.rows, "problems": upload.problems}
        sealed = crypto.encrypt(json.dumps(doc))
        self._reserve(upload)
        try:
            self._reserve_bytes(upload.id, len(sealed))
        except BufferFull:
            for key in self._pending_keys(upload):
                self.conn.zrem(key, upload.id)
            raise
        self.conn.set(self.key(upload.id), sealed, ex=UPLOAD_TTL_S)
        return upload.id

    def load(self, upload_id: str, user_id: int) -> Upload | None:
        """The upload if it exists and belongs to ``user_id``."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{10,64}", upload_id or ""):
            return None
        raw = self.conn.get(self.key(upload_id))
        if raw is None:
            return None
        doc = json.loads(crypto.decrypt(as_text(raw)))
        if doc["user_id"] != user_id:
            return None
        return Upload(doc["company_id"], doc["user_id"], doc["filename"], doc["columns"],
                      [(line, values) for line, values in doc["rows"]],
                      [(line, reason) for line, reason in doc["problems"]], upload_id)

    def delete(self, upload_id: str) -> None:
        raw = self.conn.get(self.key(upload_id))
        if raw is not None:
            doc = json.loads(crypto.decrypt(as_text(raw)))
            self.conn.zrem(f"offload:uploads:user:{doc['user_id']}", upload_id)
            self.conn.zrem(f"offload:uploads:company:{doc['company_id']}", upload_id)
            self.conn.zrem(ALL_UPLOADS, f"{upload_id}:{len(raw)}")
        self.conn.delete(self.key(upload_id))


# -- the LMS database -------------------------------------------------------------
def lms_settings(company_id: int) -> CampaignSettings | None:
    return lms_connection.settings_row(company_id)


def save_lms_settings(company_id: int, iomad_company_id, prefix: str) -> CampaignSettings:
    """Store the IOMAD company id and table prefix (admins); raise ``AudienceError`` on bad values."""
    try:
        iomad_id = int(str(iomad_company_id).strip())
    except ValueError:
        raise AudienceError("the IOMAD company id must be a whole number") from None
    prefix = (prefix or "mdl_").strip()
    if iomad_id < 1:
        raise AudienceError("the IOMAD company id must be a whole number above 0")
    if not PREFIX_RE.match(prefix):
        raise AudienceError("the table prefix may hold lowercase letters, digits and _ (e.g. mdl_)")
    row = lms_settings(company_id) or CampaignSettings(company_id=company_id)
    row.iomad_company_id, row.moodle_prefix = iomad_id, prefix
    db.session.add(row)
    db.session.commit()
    return row


def _inactive_sql(cfg: lms_connection.LmsConfig, count: bool) -> str:
    """Portable SQL (PostgreSQL and MySQL/MariaDB) over Moodle's ``user`` and IOMAD's ``company_users``."""
    cols = "count(*)" if count else "u.email, u.firstname, u.lastname, u.username, u.lastaccess"
    order = "" if count else " ORDER BY u.id"
    return (f"SELECT {cols} FROM {cfg.table('user')} u WHERE u.deleted = 0 AND u.suspended = 0 AND u.email <> '' "
            f"AND u.lastaccess < :cutoff AND EXISTS (SELECT 1 FROM {cfg.table('company_users')} cu "
            f"WHERE cu.userid = u.id AND cu.companyid = :company){order}")


def lms_engine(url: str):
    """A read-only engine on the LMS database (PostgreSQL or MySQL/MariaDB), through the endpoint guard."""
    try:
        return lms_connection.open_engine(url, read_only=True)
    except lms_connection.LmsError as exc:
        raise AudienceError(str(exc)) from None


def _lms_query(company: Company, days: int, count: bool):
    cfg = lms_connection.config_for(company)
    if not cfg.url:
        raise AudienceError("no LMS database is configured for the company (Settings › LMS connection)")
    if not cfg.iomad_company_id:
        raise AudienceError("set the company's IOMAD company id first")
    if not isinstance(days, int) or not 1 <= days <= 3650:
        raise AudienceError("inactive days must be a whole number from 1 to 3650")
    if not PREFIX_RE.match(cfg.prefix or ""):
        raise AudienceError("the stored table prefix is invalid")
    params = {"cutoff": int(time.time()) - days * 86400, "company": cfg.iomad_company_id}
    engine = lms_engine(cfg.url)
    try:
        with engine.connect() as conn:
            result = conn.execute(text(_inactive_sql(cfg, count)), params)
            return result.scalar() if count else [dict(r._mapping) for r in result]
    except SQLAlchemyError as exc:  # never the URL: it holds the LMS password
        raise AudienceError(str(lms_connection.failure("could not be read", exc))) from None
    finally:
        engine.dispose()


def count_inactive(company: Company, days: int) -> int:
    """How many of the company's LMS users have not signed in for ``days`` days."""
    return _lms_query(company, days, count=True)


def inactive_users(company: Company, days: int) -> list[dict]:
    """The company's LMS users inactive for ``days`` days, as job recipients."""
    now = int(time.time())
    found = []
    for row in _lms_query(company, days, count=False):
        last = int(row["lastaccess"] or 0)
        found.append({"email": (row["email"] or "").strip(), "data": {
            "firstname": row["firstname"] or "", "lastname": row["lastname"] or "",
            "username": row["username"] or "",
            "lastaccess": time.strftime("%Y-%m-%d", time.gmtime(last)) if last else "",
            "days_inactive": (now - last) // 86400 if last else None}})
    return found
