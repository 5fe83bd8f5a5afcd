"""A Moodle/IOMAD database for the connector's tests and bench, on the
machine's real MariaDB (127.0.0.1:3306, root) or PostgreSQL (127.0.0.1:5432),
in a fresh database per use, with any table prefix.

The tables are IOMAD's and Moodle's own (``tests.support.moodle_schema``:
the XMLDB definitions with Moodle's type mapping for each engine), and rows
are written the way IOMAD writes them: ``queue_emails`` builds each
``email`` row as ``EmailTemplate::queue_for_cron`` does, with the PHP-
serialised ``headers`` holding the ``template`` object (its fields as the
database returned them, then normalised as ``queue_for_cron`` normalises
them), an ``attachment`` object when there is one, and the ``To:``/``Cc:``/
``reply-to:`` lines it adds for the template's users and addresses.

A server that does not answer skips the test, saying so; MariaDB installed on
this machine but not answering fails it instead (``make test`` must not pass
with the MariaDB half silently skipped).
"""
from __future__ import annotations

import atexit
import shutil
import time
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from core.lms.connection import IOMAD_EMAIL_TASK
from core.rendering import valid_email
from tests.support.moodle_schema import TABLES, ddl
from tests.support.phpserialize import PhpObject, dumps

MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: the shop administrator's user id in IOMAD's ``email.userid`` (``commerce_admin_email``)
SHOP_ADMIN = -999
#: Moodle's support user (``core_user::SUPPORT_USER``): the ``senderid`` queue_for_cron writes when the sender
#: is the site's support address (IOMAD's default, ``email_senderisreal`` off)
SUPPORT_USER = -20
#: email_template's columns in table order: the template object's properties as ``get_record`` returns them
TEMPLATE_COLUMNS = ("id", "companyid", "name", "lang", "subject", "body", "signature", "disabled", "disabledmanager",
                    "disabledsupervisor", "emailto", "emailtoother", "emailcc", "emailccother", "emailfrom",
                    "emailfromother", "emailreplyto", "emailreplytoother", "repeatperiod", "repeatvalue", "repeatday",
                    "emailfromothername")
#: what queue_for_cron sets, in its order, when a template field is empty (PHP's empty(): "", "0", 0, null)
TEMPLATE_EMPTY = (("emailto", ""), ("emailtoother", ""), ("emailcc", ""), ("emailccother", ""), ("emailreplyto", ""),
                  ("emailreplytoother", ""), ("disabled", 0), ("disabledmanager", 0), ("disabledsupervisor", 0),
                  ("repeatperiod", 0), ("repeatvalue", 0), ("repeatday", 0), ("emailfrom", ""),
                  ("emailfromother", ""), ("emailfromothername", ""))


def mariadb_installed() -> bool:
    return any(shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
               for name in ("mariadbd", "mysqld"))


def php_empty(value) -> bool:
    return value in (None, "", "0", 0, False)


#: (engine, prefix) -> a database holding the built schema, made once per test process and cloned:
#: Moodle's DDL (one statement per index) takes a second on MariaDB, a clone a tenth of that
_templates: dict[tuple[str, str], str] = {}
#: (engine, prefix) -> used databases emptied for the next test (PostgreSQL's DROP DATABASE waits for a
#: checkpoint: seconds on a busy machine, where TRUNCATE takes milliseconds)
_emptied: dict[tuple[str, str], list[str]] = {}


def _server(kind: str) -> str:
    return "mysql+pymysql://root@127.0.0.1:3306" if kind == "mysql" else "postgresql+psycopg://postgres@127.0.0.1:5432"


def _template(admin, kind: str, prefix: str) -> str:
    found = _templates.get((kind, prefix))
    if found:
        return found
    name = f"moodle_tpl_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}" + (" CHARACTER SET utf8mb4" if kind == "mysql" else "")))
    atexit.register(_drop_database, kind, name)
    engine = create_engine(f"{_server(kind)}/{name}", poolclass=NullPool)
    with engine.begin() as conn:
        for statement in ddl(kind, prefix):
            conn.execute(text(statement))
    engine.dispose()
    _templates[(kind, prefix)] = name
    return name


def _clone_schema(admin, kind: str, prefix: str, name: str) -> str:
    """A database with the schema and no rows: an emptied one, else ``name`` cloned from the template."""
    spare = _emptied.get((kind, prefix))
    if spare:
        return spare.pop()
    template = _template(admin, kind, prefix)
    with admin.connect() as conn:
        if kind == "mysql":
            conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            for table in TABLES:
                conn.execute(text(f"CREATE TABLE {name}.{prefix}{table} LIKE {template}.{prefix}{table}"))
        else:
            conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    atexit.register(_drop_database, kind, name)
    return name


def _empty(engine, kind: str, prefix: str, name: str) -> bool:
    """Remove every row (sequences restart), for the next test; False if a table is still locked."""
    tables = [prefix + t for t in TABLES]
    try:
        with engine.begin() as conn:
            if kind == "mysql":
                conn.execute(text("SET SESSION lock_wait_timeout = 2"))
                for table in tables:
                    conn.execute(text(f"TRUNCATE TABLE `{table}`"))
            else:
                conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY"))
    except Exception:  # noqa: BLE001 - held by a connection a test left open: drop it instead
        return False
    _emptied.setdefault((kind, prefix), []).append(name)
    return True


def _drop_database(kind: str, name: str) -> None:
    admin = create_engine(MARIADB_ADMIN if kind == "mysql" else PG_ADMIN, poolclass=NullPool,
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}" + ("" if kind == "mysql" else " WITH (FORCE)")))
    admin.dispose()


class MoodleDb:
    """A fresh Moodle/IOMAD database; ``url`` is what a company's ``lms_url`` holds."""

    def __init__(self, kind: str, prefix: str = "mdl_"):
        self.kind, self.prefix = kind, prefix
        self.name = f"moodle_{uuid.uuid4().hex[:10]}"
        self.top_department: dict[int, int] = {}
        admin = MARIADB_ADMIN if kind == "mysql" else PG_ADMIN
        try:
            self.admin = create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                       connect_args={"connect_timeout": 3})
            with self.admin.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - no server: skip (or fail, see the module's docstring)
            where = "MariaDB at 127.0.0.1:3306" if kind == "mysql" else "PostgreSQL at 127.0.0.1:5432"
            if kind == "mysql" and mariadb_installed():
                pytest.fail(f"MariaDB is installed on this machine but {where} does not answer "
                            f"({type(exc).__name__}): start it, the LMS tests need it")
            pytest.skip(f"no {where} for the Moodle database ({type(exc).__name__})")
        self.name = _clone_schema(self.admin, kind, prefix, self.name)
        self.url = (f"mysql://root@127.0.0.1:3306/{self.name}" if kind == "mysql" else
                    f"postgresql://postgres@127.0.0.1:5432/{self.name}")
        self.engine = create_engine(f"{_server(kind)}/{self.name}", poolclass=NullPool)
        with self.engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {self.t('config')} (name, value) VALUES ('release', :r), "
                              "('version', '2024100700.00'), ('siteadmins', '2')"), {"r": "4.5 (Build: 20241007)"})
            conn.execute(text(f"INSERT INTO {self.t('task_scheduled')} (component, classname, minute, hour, day, "
                              "month, dayofweek, disabled) VALUES ('local_iomad', :c, '*', '*', '*', '*', '*', 1)"),
                         {"c": IOMAD_EMAIL_TASK})

    def t(self, table: str) -> str:
        name = self.prefix + table
        return f"`{name}`" if self.kind == "mysql" else f'"{name}"'

    def drop(self) -> None:
        """Done with it: emptied for the next test of this process (dropped when it exits)."""
        emptied = _empty(self.engine, self.kind, self.prefix, self.name)
        self.engine.dispose()
        self.admin.dispose()
        if not emptied:
            _drop_database(self.kind, self.name)

    # -- rows ------------------------------------------------------------------
    def execute(self, sql: str, params=None):
        with self.engine.begin() as conn:
            return conn.execute(text(sql), params or {})

    def all(self, sql: str, params=None) -> list:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params or {}).all()

    def set_config(self, name: str, value: str) -> None:
        """A Moodle ``$CFG`` setting (``mdl_config``), as an admin page stores it."""
        self.execute(f"DELETE FROM {self.t('config')} WHERE name = :n", {"n": name})
        self.execute(f"INSERT INTO {self.t('config')} (name, value) VALUES (:n, :v)", {"n": name, "v": value})

    def add_company(self, company_id: int, name: str, **fields) -> None:
        """An IOMAD company and its top department (as IOMAD's company form creates them)."""
        values = {"id": company_id, "name": name, "shortname": name[:25], **fields}
        cols = ", ".join(values)
        self.execute(f"INSERT INTO {self.t('company')} ({cols}) VALUES ({', '.join(':' + c for c in values)})",
                     values)
        self.top_department[company_id] = self.add_department(company_id, name, parent=0)

    def add_department(self, company_id: int, name: str, parent: int) -> int:
        with self.engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {self.t('department')} (name, shortname, company, parent) "
                              "VALUES (:n, :s, :c, :p)"), {"n": name, "s": name[:32], "c": company_id, "p": parent})
            return int(conn.execute(text(f"SELECT max(id) FROM {self.t('department')}")).scalar())

    def add_users(self, users: list[dict], company_id: int | None, *, department: int | None = None,
                  managertype: int = 0) -> None:
        """``users``: dicts with id, email and optionally firstname, lastname, deleted, suspended,
        lastaccess, lang; each joins ``company_id`` (its top department unless ``department``)."""
        now = int(time.time())
        rows = [{"id": u["id"], "username": u.get("username", f"user{u['id']}"), "email": u.get("email", ""),
                 "firstname": u.get("firstname", f"First{u['id']}"), "lastname": u.get("lastname", "Learner"),
                 "deleted": u.get("deleted", 0), "suspended": u.get("suspended", 0), "lang": u.get("lang", "en"),
                 "lastaccess": u.get("lastaccess", now), "mnethostid": 1, "confirmed": 1, "timecreated": now}
                for u in users]
        self.execute(f"INSERT INTO {self.t('user')} (id, username, email, firstname, lastname, deleted, suspended, "
                     "lang, lastaccess, mnethostid, confirmed, timecreated) VALUES (:id, :username, :email, "
                     ":firstname, :lastname, :deleted, :suspended, :lang, :lastaccess, :mnethostid, :confirmed, "
                     ":timecreated)", rows)
        if company_id is not None:
            self.join_company([u["id"] for u in users], company_id, department=department, managertype=managertype)

    def join_company(self, user_ids: list[int], company_id: int, *, department: int | None = None,
                     managertype: int = 0) -> None:
        dept = department or self.top_department[company_id]
        self.execute(f"INSERT INTO {self.t('company_users')} (companyid, userid, managertype, departmentid) "
                     "VALUES (:c, :u, :m, :d)",
                     [{"c": company_id, "u": uid, "m": managertype, "d": dept} for uid in user_ids])

    def set_profile_field(self, user_id: int, field_id: int, data: str) -> None:
        """A custom profile field's value (``user_info_data``): IOMAD's supervisor addresses live in one."""
        self.execute(f"INSERT INTO {self.t('user_info_data')} (userid, fieldid, data) VALUES (:u, :f, :d)",
                     {"u": user_id, "f": field_id, "d": data})

    def add_template(self, company_id: int, name: str, **fields) -> PhpObject:
        """An ``email_template`` row; returns it as ``$DB->get_record`` does (every value a string, or null)."""
        values = {"companyid": company_id, "name": name, "lang": "en", "subject": f"{name} subject",
                  "body": f"{name} body", **fields}
        cols = ", ".join(values)
        with self.engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {self.t('email_template')} ({cols}) VALUES "
                              f"({', '.join(':' + c for c in values)})"), values)
            row = conn.execute(text(f"SELECT * FROM {self.t('email_template')} WHERE id = "
                                    f"(SELECT max(id) FROM {self.t('email_template')})")).mappings().one()
        return PhpObject((c, None if row[c] is None else str(row[c])) for c in TEMPLATE_COLUMNS)

    # -- IOMAD's email queue ----------------------------------------------------------
    def _active_emails(self, ids: str | None) -> list[str]:
        """The addresses of the active users in a comma-separated id list (queue_for_cron's get_record)."""
        wanted = [int(i) for i in str(ids or "").split(",") if i.strip().lstrip("-").isdigit()]
        if not wanted:
            return []
        found = dict(self.all(f"SELECT id, email FROM {self.t('user')} WHERE deleted = 0 AND suspended = 0 "
                              f"AND id IN ({', '.join(str(i) for i in wanted)})"))
        return [found[i] for i in wanted if i in found]

    def iomad_headers(self, templatename: str, template: PhpObject | None = None,
                      attachment: dict | None = None) -> str:
        """``email.headers`` as ``queue_for_cron`` serialises them for this template."""
        tpl = PhpObject(template if template is not None else {"subject": f"{templatename} subject",
                                                              "body": f"{templatename} body"})
        custom: dict = {}
        if attachment:
            custom["attachment"] = PhpObject(attachment)
        lines = [f"To:{a}" for a in self._active_emails(tpl.get("emailto"))]
        lines += [f"To:{a}" for a in str(tpl.get("emailtoother") or "").split(",") if valid_email(a)]
        lines += [f"Cc:{a}" for a in self._active_emails(tpl.get("emailcc"))]
        lines += [f"Cc:{a}" for a in str(tpl.get("emailccother") or "").split(",") if valid_email(a)]
        lines += [f"reply-to:{a}" for a in self._active_emails(tpl.get("emailreplyto"))[:1]]
        if valid_email(str(tpl.get("emailreplytoother") or "")):
            lines.append(f"reply-to:{tpl['emailreplytoother']}")
        for n, line in enumerate(lines):
            custom[n] = line
        if php_empty(tpl.get("signature")):
            tpl["signature"] = ""
        for key, empty in TEMPLATE_EMPTY:
            if php_empty(tpl.get(key)) or (key == "emailreplytoother" and not valid_email(str(tpl.get(key)))):
                tpl[key] = empty
        if php_empty(tpl.get("name")):
            tpl["name"] = templatename
        custom["template"] = tpl
        return dumps(custom)

    def queue_emails(self, rows: list[dict]) -> None:
        """IOMAD email rows, written as ``queue_for_cron`` writes them. Each row: userid, companyid
        and optionally templatename, subject, body, senderid (default the support user, -20), due,
        varsreplaced, courseid,
        modifiedtime, ``template`` (a template object, e.g. from ``add_template``), ``attachment``
        (filepath, filename) or ``headers`` (a raw string, written as it is)."""
        now = int(time.time())
        prepared = []
        for r in rows:
            name = r.get("templatename", "course_completed_manager")
            headers = r["headers"] if "headers" in r else self.iomad_headers(name, r.get("template"),
                                                                              r.get("attachment"))
            prepared.append({"templatename": name, "modifiedtime": r.get("modifiedtime", now),
                             "subject": r.get("subject", "Hello"), "body": r.get("body", "<p>Hello</p>"),
                             "varsreplaced": r.get("varsreplaced", 1), "userid": r["userid"],
                             "senderid": r.get("senderid", SUPPORT_USER), "headers": headers,
                             "due": r.get("due", now - 60), "companyid": r["companyid"],
                             "courseid": r.get("courseid")})
        self.execute(f"INSERT INTO {self.t('email')} (templatename, modifiedtime, subject, body, varsreplaced, "
                     "userid, senderid, headers, due, companyid, courseid) VALUES (:templatename, :modifiedtime, "
                     ":subject, :body, :varsreplaced, :userid, :senderid, :headers, :due, :companyid, :courseid)",
                     prepared)

    def emails(self, company_id: int | None = None) -> list:
        where = "" if company_id is None else f" WHERE companyid = {int(company_id)}"
        return self.all(f"SELECT id, userid, sent, modifiedtime, templatename, companyid FROM {self.t('email')}"
                        f"{where} ORDER BY id")

    def set_iomad_task(self, disabled: int) -> None:
        self.execute(f"UPDATE {self.t('task_scheduled')} SET disabled = :d WHERE classname = :c",
                     {"d": disabled, "c": IOMAD_EMAIL_TASK})
