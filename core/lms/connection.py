"""The connection to a company's Moodle/IOMAD database.

Only PostgreSQL (psycopg) and MySQL/MariaDB (PyMySQL) URLs are accepted:
no SQLite, no unix sockets, no driver query parameters (they could point
the driver elsewhere or load files). The host goes through
``providers.guard`` and the driver connects to the checked address
(``hostaddr`` for psycopg, the IP itself for PyMySQL), never to a second
DNS answer. Errors name a fixed phrase and the error class, never the
remote server's text or the URL (it holds the LMS password).
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from core.db import db
from core.models import CampaignSettings, Company
from providers import guard

PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,19}$")
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
MYSQL_SCHEMES = ("mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 60
#: how long a process keeps an LMS engine (its pinned address, its pooled connection); at most how many
ENGINE_TTL_S = 300
MAX_ENGINES = 8
#: IOMAD's own sender; its class name as Moodle stores it (with and without the leading backslash)
IOMAD_EMAIL_TASK = "\\local_iomad\\task\\email_cron_task"


class LmsError(ValueError):
    """The LMS cannot be used; the message says why (a fixed phrase, never a secret or a remote text)."""


@dataclass(frozen=True)
class Target:
    """A checked LMS database URL: which engine, where, as whom."""

    kind: str  # postgresql | mysql
    host: str
    port: int
    database: str
    username: str | None
    password: str | None


def parse_url(raw: str) -> Target:
    """Check an ``lms_url``; raise ``LmsError`` naming what is wrong (never echoing the URL)."""
    try:
        url = make_url((raw or "").strip())
    except (ArgumentError, ValueError):
        raise LmsError("lms_url: not a database URL (expected mysql://user:pass@host:3306/db "
                       "or postgresql://user:pass@host:5432/db)") from None
    scheme = url.drivername.lower()
    if scheme in POSTGRES_SCHEMES:
        kind = "postgresql"
    elif scheme in MYSQL_SCHEMES:
        kind = "mysql"
    else:
        raise LmsError("lms_url: only postgresql:// and mysql:// (MySQL/MariaDB) databases are supported")
    if url.query:
        raise LmsError("lms_url: query parameters are not accepted")
    if not url.host or url.host.startswith("/") or "/" in url.host:
        raise LmsError("lms_url: a host name or address is required (no unix sockets)")
    if not url.database or "/" in url.database:
        raise LmsError("lms_url: the database name is missing")
    port = url.port or DEFAULT_PORTS[kind]
    if not 0 < port < 65536:
        raise LmsError("lms_url: port out of range")
    return Target(kind, url.host, port, url.database, url.username, url.password)


def check_prefix(prefix: str) -> str:
    prefix = (prefix or "mdl_").strip()
    if not PREFIX_RE.match(prefix):
        raise LmsError("lms_prefix: lowercase letters, digits and _ only, starting with a letter (e.g. mdl_)")
    return prefix


def open_engine(raw_url: str, *, read_only: bool) -> Engine:
    """An engine on the LMS database, connecting to the guard-checked address (dispose of it after use;
    the pollers share one per process: ``engine_for``).

    ``read_only``: every transaction is read-only (audiences, tests of the
    connection, completions); the email poller needs writes (``email.sent``).
    """
    target = parse_url(raw_url)
    try:
        address = guard.resolve(target.host, target.port)[0]
    except guard.EndpointRefused as exc:
        raise LmsError(f"lms_url: {exc}") from None
    if target.kind == "postgresql":
        url = URL.create("postgresql+psycopg", username=target.username, password=target.password,
                         host=target.host, port=target.port, database=target.database)
        options = f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"
        if read_only:
            options += " -c default_transaction_read_only=on"
        args = {"hostaddr": address, "connect_timeout": CONNECT_TIMEOUT_S, "options": options}
    else:
        url = URL.create("mysql+pymysql", username=target.username, password=target.password,
                         host=address, port=target.port, database=target.database)
        args = {"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": STATEMENT_TIMEOUT_S,
                "write_timeout": STATEMENT_TIMEOUT_S, "charset": "utf8mb4", "local_infile": False}
    try:
        # a small pool for the engine's life; autocommit: every statement is its own transaction (reads,
        # the guarded UPDATEs of ``sent``), so no BEGIN/COMMIT/ROLLBACK round trips reach the LMS
        engine = create_engine(url, poolclass=QueuePool, pool_size=1, max_overflow=2, pool_recycle=ENGINE_TTL_S,
                               isolation_level="AUTOCOMMIT", skip_autocommit_rollback=True, connect_args=args)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise LmsError(f"the LMS database URL cannot be used ({type(exc).__name__})") from None
    if target.kind == "mysql" and read_only:
        @event.listens_for(engine, "connect")
        def _session(dbapi_conn, _record):
            with dbapi_conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION READ ONLY")
    return engine


_engines: OrderedDict[tuple[str, bool], tuple[Engine, float]] = OrderedDict()
_engines_lock = threading.Lock()


def engine_for(raw_url: str, *, read_only: bool) -> Engine:
    """The process's engine on this LMS database: kept for ``ENGINE_TTL_S`` (then the host is resolved and
    checked again), at most ``MAX_ENGINES`` of them, so the pollers and the marking of rows reuse one
    connection instead of connecting (and SQLAlchemy's first-connect queries) every time."""
    key = (raw_url, read_only)
    now = time.monotonic()
    with _engines_lock:
        found = _engines.get(key)
        if found and now - found[1] < ENGINE_TTL_S:
            _engines.move_to_end(key)
            return found[0]
        stale = [_engines.pop(key)[0]] if found else []
        engine = open_engine(raw_url, read_only=read_only)
        _engines[key] = (engine, now)
        while len(_engines) > MAX_ENGINES:
            stale.append(_engines.popitem(last=False)[1][0])
    for old in stale:
        old.dispose()
    return engine


def dispose_engines() -> None:
    """Close every kept LMS engine (a worker's shutdown, tests)."""
    with _engines_lock:
        engines = [e for e, _ in _engines.values()]
        _engines.clear()
    for engine in engines:
        engine.dispose()


@dataclass(frozen=True)
class LmsConfig:
    """A company's LMS connection settings, as plain values."""

    company_id: int
    url: str | None
    prefix: str
    iomad_company_id: int | None
    email_queue: bool
    completions: bool
    dataroot: str | None
    site_queue: bool = False
    purge: bool = False

    @property
    def db_url(self) -> str:
        """The LMS database's URL; ``LmsError`` when none is configured."""
        if not self.url:
            raise LmsError("no LMS database is configured for the company (lms_url)")
        return self.url

    def require(self, *, own_company: bool = True) -> None:
        """Raise ``LmsError`` unless the connection can be used (``own_company``: an IOMAD company
        id is needed; the site queue's company may have none)."""
        if not self.url:
            raise LmsError("lms_url: no LMS database is configured for the company")
        if own_company and not self.iomad_company_id:
            raise LmsError("iomad_company_id: not set; set the company's IOMAD company id first")
        check_prefix(self.prefix)

    def same_lms(self, other: LmsConfig) -> bool:
        """Both name the same Moodle database and table prefix."""
        if not (self.url and other.url) or self.prefix != other.prefix:
            return False
        try:
            a, b = parse_url(self.url), parse_url(other.url)
        except LmsError:
            return False
        return (a.kind, a.host.lower(), a.port, a.database) == (b.kind, b.host.lower(), b.port, b.database)

    def table(self, name: str) -> str:
        """A Moodle table's real name (the prefix was checked: safe in SQL)."""
        return check_prefix(self.prefix) + name


def settings_row(company_id: int) -> CampaignSettings | None:
    return db.session.execute(CampaignSettings.scoped(company_id)).scalar_one_or_none()


def config_for(company: Company) -> LmsConfig:
    return _config(company, settings_row(company.id))


def _config(company: Company, row: CampaignSettings | None) -> LmsConfig:
    return LmsConfig(company.id, company.moodle_db_url, (row.moodle_prefix if row else None) or "mdl_",
                     row.iomad_company_id if row else None, bool(row and row.iomad_email_queue),
                     bool(row and row.lms_completions), row.lms_dataroot if row else None,
                     bool(row and row.iomad_site_queue), bool(row and row.iomad_purge))


def email_queue_configs() -> list[LmsConfig]:
    """Every company's LMS settings with IOMAD's queue taken over."""
    rows = db.session.execute(select(Company, CampaignSettings).join(
        CampaignSettings, CampaignSettings.company_id == Company.id).where(
        CampaignSettings.iomad_email_queue.is_(True))).all()
    return [_config(company, row) for company, row in rows]


def mapped_elsewhere(cfg: LmsConfig) -> tuple[int, ...]:
    """The IOMAD companies other companies take from the same Moodle database."""
    return tuple(sorted({o.iomad_company_id for o in email_queue_configs()
                         if o.company_id != cfg.company_id and o.iomad_company_id and cfg.same_lms(o)}))


def site_queue_holder(cfg: LmsConfig) -> int | None:
    """The company (other than ``cfg``'s) that sends this Moodle database's site queue, if any."""
    return next((o.company_id for o in email_queue_configs()
                 if o.company_id != cfg.company_id and o.site_queue and cfg.same_lms(o)), None)


def failure(action: str, exc: Exception) -> LmsError:
    """A fixed phrase and the error class (and the driver's numeric code): never the remote text."""
    orig = getattr(exc, "orig", None) or exc
    code = ""
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        code = f" {args[0]}"
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        code = f" {sqlstate}"
    return LmsError(f"the LMS database {action} ({type(orig).__name__}{code})")


def task_sql(cfg: LmsConfig) -> str:
    """``disabled`` of IOMAD's own email task in ``task_scheduled`` (binds ``:task_a``, ``:task_b``)."""
    return f"SELECT disabled FROM {cfg.table('task_scheduled')} WHERE classname IN (:task_a, :task_b)"


TASK_NAMES = {"task_a": IOMAD_EMAIL_TASK, "task_b": IOMAD_EMAIL_TASK.lstrip("\\")}


def iomad_task_enabled(conn, cfg: LmsConfig) -> bool:
    """True when IOMAD's own email task is enabled in ``task_scheduled`` (it would send the queue too)."""
    row = conn.execute(text(task_sql(cfg)), TASK_NAMES).first()
    return row is not None and int(row[0] or 0) == 0


DISABLE_HINT = ("disable it in Moodle (Site administration > Server > Tasks > Scheduled tasks > "
                f"{IOMAD_EMAIL_TASK} > Disabled), or set OFFLOAD_LMS_FORCE=1 to take the queue anyway")


def describe_connection(company: Company) -> dict:
    """What the connection can see: Moodle's release, the IOMAD company, counts.

    Raises ``LmsError`` (fixed phrases) when it cannot connect or read.
    """
    cfg = config_for(company)
    cfg.require()
    engine = open_engine(cfg.db_url, read_only=True)
    found: dict = {"engine": engine.dialect.name}
    try:
        with engine.connect() as conn:
            found["moodle_release"] = conn.execute(text(
                f"SELECT value FROM {cfg.table('config')} WHERE name = 'release'")).scalar()
            found["iomad_company"] = conn.execute(text(
                f"SELECT name FROM {cfg.table('company')} WHERE id = :c"), {"c": cfg.iomad_company_id}).scalar()
            found["users"] = conn.execute(text(
                f"SELECT count(DISTINCT userid) FROM {cfg.table('company_users')} WHERE companyid = :c"),
                {"c": cfg.iomad_company_id}).scalar()
            found["queued_emails"] = conn.execute(text(
                f"SELECT count(*) FROM {cfg.table('email')} WHERE companyid = :c AND sent IS NULL"),
                {"c": cfg.iomad_company_id}).scalar()
            found["completions"] = conn.execute(text(
                f"SELECT count(*) FROM {cfg.table('course_completions')} cc WHERE cc.timecompleted IS NOT NULL "
                f"AND EXISTS (SELECT 1 FROM {cfg.table('company_users')} cu WHERE cu.userid = cc.userid "
                "AND cu.companyid = :c)"), {"c": cfg.iomad_company_id}).scalar()
            found["iomad_email_task"] = "enabled" if iomad_task_enabled(conn, cfg) else "disabled"
    except SQLAlchemyError as exc:
        raise failure("could not be read", exc) from None
    finally:
        engine.dispose()
    if found["iomad_company"] is None:
        raise LmsError(f"no IOMAD company with id {cfg.iomad_company_id} in the LMS database")
    return found
