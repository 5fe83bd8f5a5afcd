"""Who a campaign goes to: an uploaded CSV list, or the LMS users inactive for
N days read (read-only) from the company's Moodle/IOMAD database.

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

from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment
from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from core import crypto
from core.models import CampaignSettings
from core.db import db
from core.models import Company
from core.rendering import valid_email
from core.settings import normalize_database_url
from providers import guard

UPLOAD_TTL_S = 3600
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MASK = "••••"
#: fields whose values the preview never shows (passwords, licence codes, tokens)
SECRET_FIELD = re.compile(r"pass|pwd|secret|token|licen[cs]e|code|key", re.IGNORECASE)
PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,19}$")


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


def template_fields(*sources: str | None) -> list[str]:
    """The variables a template's subject and bodies use, sorted."""
    env = SandboxedEnvironment()
    found: set[str] = set()
    for source in sources:
        if source:
            try:
                found |= meta.find_undeclared_variables(env.parse(source))
            except Exception:  # a broken template: create_job reports it properly
                continue
    return sorted(found)


def masked(data: dict) -> dict:
    """``data`` with secret-looking fields replaced by ``MASK`` (for previews)."""
    return {k: (MASK if SECRET_FIELD.search(k) and v not in (None, "") else v) for k, v in (data or {}).items()}


class UploadStore:
    """Uploads between the upload and confirm steps: encrypted in Redis, one hour.

    Redis runs ``noeviction``: pending uploads are capped per user and per
    company (``OFFLOAD_MAX_UPLOADS_PER_USER`` / ``_PER_COMPANY``); a confirmed
    or expired upload frees its place."""

    def __init__(self, conn: Redis, max_per_user: int = 5, max_per_company: int = 20):
        self.conn = conn
        self.max_per_user, self.max_per_company = max_per_user, max_per_company

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
        self._reserve(upload)
        doc = {"company_id": upload.company_id, "user_id": upload.user_id, "filename": upload.filename,
               "columns": upload.columns, "rows": upload.rows, "problems": upload.problems}
        self.conn.set(self.key(upload.id), crypto.encrypt(json.dumps(doc)), ex=UPLOAD_TTL_S)
        return upload.id

    def load(self, upload_id: str, user_id: int) -> Upload | None:
        """The upload if it exists and belongs to ``user_id``."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{10,64}", upload_id or ""):
            return None
        raw = self.conn.get(self.key(upload_id))
        if raw is None:
            return None
        doc = json.loads(crypto.decrypt(raw.decode()))
        if doc["user_id"] != user_id:
            return None
        return Upload(doc["company_id"], doc["user_id"], doc["filename"], doc["columns"],
                      [(line, values) for line, values in doc["rows"]],
                      [(line, reason) for line, reason in doc["problems"]], upload_id)

    def delete(self, upload_id: str) -> None:
        raw = self.conn.get(self.key(upload_id))
        if raw is not None:
            doc = json.loads(crypto.decrypt(raw.decode()))
            self.conn.zrem(f"offload:uploads:user:{doc['user_id']}", upload_id)
            self.conn.zrem(f"offload:uploads:company:{doc['company_id']}", upload_id)
        self.conn.delete(self.key(upload_id))


# -- the LMS database -------------------------------------------------------------
def lms_settings(company_id: int) -> CampaignSettings | None:
    return db.session.execute(CampaignSettings.scoped(company_id)).scalar_one_or_none()


def save_lms_settings(company_id: int, iomad_company_id, prefix: str) -> CampaignSettings:
    """Store the IOMAD company id and table prefix; raise ``AudienceError`` on bad values."""
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


def _inactive_sql(prefix: str, count: bool) -> str:
    cols = "count(*)" if count else "u.email, u.firstname, u.lastname, u.username, u.lastaccess"
    order = "" if count else " ORDER BY u.id"
    return (f"SELECT {cols} FROM {prefix}user u WHERE u.deleted = 0 AND u.suspended = 0 AND u.email <> '' "
            f"AND u.lastaccess < :cutoff AND EXISTS (SELECT 1 FROM {prefix}company_users cu "
            f"WHERE cu.userid = u.id AND cu.companyid = :company){order}")


#: the LMS database kinds, and the one driver each is reached with
LMS_BACKENDS = {"postgresql": ("postgresql+psycopg", 5432), "mysql": ("mysql+pymysql", 3306),
                "mariadb": ("mysql+pymysql", 3306)}


def check_lms_url(raw: str, *, saving: bool = False) -> URL:
    """The LMS database URL, checked: PostgreSQL or MySQL/MariaDB over TCP, to a host the
    endpoint guard allows. No SQLite, no unix socket, no driver query parameters (they
    can name a socket, a file or a command). Errors never echo the URL (it holds a password)."""
    try:
        url = make_url(normalize_database_url((raw or "").strip()))
    except (ArgumentError, ValueError):
        raise AudienceError("the LMS database URL is malformed") from None
    backend = url.get_backend_name()
    if backend not in LMS_BACKENDS:
        raise AudienceError("the LMS database must be PostgreSQL or MySQL/MariaDB "
                            "(postgresql://… or mysql://…)")
    if url.query:
        raise AudienceError("the LMS database URL may not carry query parameters")
    host = url.host or ""
    if not host or host.startswith("/") or any(c in host for c in ",/%@ ") or not url.database:
        raise AudienceError("the LMS database URL needs a host name (no unix socket) and a database")
    driver, default_port = LMS_BACKENDS[backend]
    try:
        guard.resolve(host, url.port or default_port)
    except guard.EndpointRefused as exc:
        if saving and exc.rule == "unresolvable":  # checked again at every connection
            return url.set(drivername=driver, port=url.port or default_port)
        raise AudienceError(f"the LMS database host is refused ({exc.rule}): {exc}") from None
    return url.set(drivername=driver, port=url.port or default_port)


def lms_engine(url: str):
    """An engine on the LMS database, at the address the guard checked; on PostgreSQL
    every transaction is read-only."""
    checked = check_lms_url(url)
    try:
        address = guard.resolve(checked.host, checked.port)[0]
    except guard.EndpointRefused as exc:
        raise AudienceError(f"the LMS database host is refused ({exc.rule}): {exc}") from None
    if checked.get_backend_name() == "postgresql":
        # hostaddr: connect to the checked address; host stays the name (TLS, .pgpass)
        args = {"connect_timeout": 10, "hostaddr": address,
                "options": "-c default_transaction_read_only=on -c statement_timeout=60000"}
    else:
        checked = checked.set(host=address)
        args = {"connect_timeout": 10, "read_timeout": 60}
    try:
        return create_engine(checked, poolclass=NullPool, connect_args=args)
    except (SQLAlchemyError, ValueError, ImportError) as exc:  # never the URL: it holds the LMS password
        raise AudienceError(f"the LMS database URL cannot be used ({type(exc).__name__})") from None


def _lms_query(company: Company, days: int, count: bool):
    if not company.moodle_db_url:
        raise AudienceError("no LMS database is configured for the company (moodle_db_url)")
    settings = lms_settings(company.id)
    if settings is None or not settings.iomad_company_id:
        raise AudienceError("set the company's IOMAD company id first")
    if not isinstance(days, int) or not 1 <= days <= 3650:
        raise AudienceError("inactive days must be a whole number from 1 to 3650")
    if not PREFIX_RE.match(settings.moodle_prefix or ""):
        raise AudienceError("the stored table prefix is invalid")
    params = {"cutoff": int(time.time()) - days * 86400, "company": settings.iomad_company_id}
    engine = lms_engine(company.moodle_db_url)
    try:
        with engine.connect() as conn:
            result = conn.execute(text(_inactive_sql(settings.moodle_prefix, count)), params)
            return result.scalar() if count else [dict(r._mapping) for r in result]
    except SQLAlchemyError as exc:  # never the URL: it holds the LMS password
        raise AudienceError(f"the LMS database could not be read ({type(exc).__name__})") from None
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
