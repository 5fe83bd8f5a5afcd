"""A Moodle/IOMAD-shaped database for the connector's tests, on the machine's
real MariaDB (127.0.0.1:3306, root) or PostgreSQL (127.0.0.1:5432), in a
fresh database per use, with any table prefix.

The tables follow Moodle's XMLDB definitions (``lib/db/install.xml``:
``config``, ``user``, ``course``, ``course_completions``, ``task_scheduled``;
IOMAD's ``local/iomad/db/install.xml``: ``company``, ``company_users``; and
``local/email``'s ``email`` table as its install/upgrade steps build it),
a subset of their columns with Moodle's names, types, nullability and
defaults, mapped to each engine as Moodle's own generators map them:
XMLDB ``INTEGER(n)`` is TINYINT/SMALLINT/MEDIUMINT/INT/BIGINT(n) on MySQL by
``n`` and SMALLINT/INTEGER/BIGINT on PostgreSQL, ``CHAR(n)`` is VARCHAR(n),
``TEXT`` is LONGTEXT on MySQL and TEXT on PostgreSQL.
"""
from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from core.lms.connection import IOMAD_EMAIL_TASK
from core.lms.phpserial import dumps

MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# (name, type, length, not null, default); the first column of every table is ``id`` INTEGER(10) sequence
TABLES: dict[str, list[tuple]] = {
    "config": [("name", "char", 255, True, ""), ("value", "text", None, True, None)],
    "user": [("auth", "char", 20, True, "manual"), ("confirmed", "int", 1, True, 0),
             ("policyagreed", "int", 1, True, 0),
             ("deleted", "int", 1, True, 0), ("suspended", "int", 1, True, 0), ("mnethostid", "int", 10, True, 0),
             ("username", "char", 100, True, ""), ("password", "char", 255, True, ""),
             ("idnumber", "char", 255, True, ""), ("firstname", "char", 100, True, ""),
             ("lastname", "char", 100, True, ""), ("email", "char", 100, True, ""),
             ("lang", "char", 30, True, "en"), ("firstaccess", "int", 10, True, 0),
             ("lastaccess", "int", 10, True, 0), ("timecreated", "int", 10, True, 0),
             ("timemodified", "int", 10, True, 0)],
    "course": [("category", "int", 10, True, 0), ("sortorder", "int", 10, True, 0),
               ("fullname", "char", 1333, True, ""), ("shortname", "char", 255, True, ""),
               ("idnumber", "char", 100, True, ""), ("visible", "int", 1, True, 1),
               ("timecreated", "int", 10, True, 0), ("timemodified", "int", 10, True, 0)],
    "course_completions": [("userid", "int", 10, True, 0), ("course", "int", 10, True, 0),
                           ("timeenrolled", "int", 10, True, 0), ("timestarted", "int", 10, True, 0),
                           ("timecompleted", "int", 10, False, None), ("reaggregate", "int", 10, True, 0)],
    "task_scheduled": [("component", "char", 255, True, ""), ("classname", "char", 255, True, ""),
                       ("lastruntime", "int", 10, False, None), ("nextruntime", "int", 10, False, None),
                       ("blocking", "int", 2, True, 0), ("minute", "char", 25, True, ""),
                       ("hour", "char", 25, True, ""), ("day", "char", 25, True, ""),
                       ("month", "char", 25, True, ""), ("dayofweek", "char", 25, True, ""),
                       ("faildelay", "int", 10, False, None), ("customised", "int", 2, True, 0),
                       ("disabled", "int", 1, True, 0)],
    "company": [("name", "char", 50, True, None), ("shortname", "char", 25, True, None),
                ("code", "char", 25, False, None), ("city", "char", 50, False, None),
                ("country", "char", 2, False, None), ("suspended", "int", 1, True, 0)],
    "company_users": [("companyid", "int", 10, True, None), ("userid", "int", 10, True, None),
                      ("managertype", "int", 2, True, 0), ("departmentid", "int", 10, True, 0),
                      ("suspended", "int", 1, True, 0), ("educator", "int", 1, True, 0)],
    "email": [("templatename", "char", 100, False, None), ("modifiedtime", "int", 20, True, None),
              ("sent", "int", 20, False, None), ("subject", "char", 255, True, None),
              ("body", "text", None, True, None), ("varsreplaced", "int", 20, False, None),
              ("courseid", "int", 20, False, None), ("userid", "int", 20, True, None),
              ("invoiceid", "int", 20, False, None), ("classroomid", "int", 20, False, None),
              ("senderid", "int", 20, False, None), ("headers", "text", None, False, None),
              ("due", "int", 20, True, 0), ("companyid", "int", 10, False, None)],
}
INDEXES = {"config": ("name",), "user": ("username", "mnethostid"), "course_completions": ("userid", "course"),
           "task_scheduled": ("classname",)}
NON_UNIQUE = {"email": ("companyid", "sent")}


def _int_type(kind: str, length: int) -> str:
    if kind == "mysql":
        for limit, name in ((2, "TINYINT"), (4, "SMALLINT"), (6, "MEDIUMINT"), (9, "INT")):
            if length <= limit:
                return f"{name}({length})"
        return f"BIGINT({length})"
    return "SMALLINT" if length <= 4 else "INTEGER" if length <= 9 else "BIGINT"


def ddl(kind: str, prefix: str) -> list[str]:
    """CREATE TABLE / INDEX statements of the schema for ``kind`` (mysql | postgresql)."""
    q = (lambda n: f"`{n}`") if kind == "mysql" else (lambda n: f'"{n}"')
    out = []
    for table, cols in TABLES.items():
        name = prefix + table
        pk = "id BIGINT(10) NOT NULL AUTO_INCREMENT" if kind == "mysql" else "id BIGSERIAL"
        parts = [pk]
        for col, ctype, length, notnull, default in cols:
            if ctype == "int":
                sql = _int_type(kind, length)
            elif ctype == "char":
                sql = f"VARCHAR({length})"
            else:
                sql = "LONGTEXT" if kind == "mysql" else "TEXT"
            sql = f"{q(col)} {sql}" + (" NOT NULL" if notnull else "")
            if default is not None and ctype != "text":
                sql += f" DEFAULT {default!r}" if isinstance(default, str) else f" DEFAULT {default}"
            parts.append(sql)
        parts.append("PRIMARY KEY (id)")
        tail = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci" if kind == "mysql" else ""
        out.append(f"CREATE TABLE {q(name)} ({', '.join(parts)}){tail}")
        if table in INDEXES:
            cols_sql = ", ".join(q(c) for c in INDEXES[table])
            out.append(f"CREATE UNIQUE INDEX {name}_uix ON {q(name)} ({cols_sql})")
        for col in NON_UNIQUE.get(table, ()):
            out.append(f"CREATE INDEX {name}_{col}_ix ON {q(name)} ({q(col)})")
    return out


class MoodleDb:
    """A fresh Moodle/IOMAD database; ``url`` is what a company's ``lms_url`` holds."""

    def __init__(self, kind: str, prefix: str = "mdl_"):
        self.kind, self.prefix = kind, prefix
        self.name = f"moodle_{uuid.uuid4().hex[:10]}"
        admin = MARIADB_ADMIN if kind == "mysql" else PG_ADMIN
        try:
            self.admin = create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                       connect_args={"connect_timeout": 3})
            with self.admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {self.name}" +
                                  (" CHARACTER SET utf8mb4" if kind == "mysql" else "")))
        except Exception as exc:  # noqa: BLE001 - no server: skip
            pytest.skip(f"no {kind} server for the Moodle database: {type(exc).__name__}")
        if kind == "mysql":
            self.url = f"mysql://root@127.0.0.1:3306/{self.name}"
            self.engine = create_engine(f"mysql+pymysql://root@127.0.0.1:3306/{self.name}", poolclass=NullPool)
        else:
            self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
            self.engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.name}",
                                        poolclass=NullPool)
        with self.engine.begin() as conn:
            for statement in ddl(kind, prefix):
                conn.execute(text(statement))
            conn.execute(text(f"INSERT INTO {self.t('config')} (name, value) VALUES ('release', :r), "
                              "('version', '2024100700.00')"), {"r": "4.5 (Build: 20241007)"})
            conn.execute(text(f"INSERT INTO {self.t('task_scheduled')} (component, classname, minute, hour, day, "
                              "month, dayofweek, disabled) VALUES ('local_iomad', :c, '*', '*', '*', '*', '*', 1)"),
                         {"c": IOMAD_EMAIL_TASK})

    def t(self, table: str) -> str:
        name = self.prefix + table
        return f"`{name}`" if self.kind == "mysql" else f'"{name}"'

    def drop(self) -> None:
        self.engine.dispose()
        with self.admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {self.name}" + ("" if self.kind == "mysql" else
                                                                        " WITH (FORCE)")))
        self.admin.dispose()

    # -- rows ------------------------------------------------------------------
    def execute(self, sql: str, params=None):
        with self.engine.begin() as conn:
            return conn.execute(text(sql), params or {})

    def all(self, sql: str, params=None) -> list:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params or {}).all()

    def add_company(self, company_id: int, name: str) -> None:
        self.execute(f"INSERT INTO {self.t('company')} (id, name, shortname) VALUES (:i, :n, :s)",
                     {"i": company_id, "n": name, "s": name[:25]})

    def add_users(self, users: list[dict], company_id: int) -> None:
        """``users``: dicts with id, email and optionally firstname, lastname, deleted, suspended."""
        now = int(time.time())
        rows = [{"id": u["id"], "username": u.get("username", f"user{u['id']}"), "email": u.get("email", ""),
                 "firstname": u.get("firstname", f"First{u['id']}"), "lastname": u.get("lastname", "Learner"),
                 "deleted": u.get("deleted", 0), "suspended": u.get("suspended", 0),
                 "lastaccess": u.get("lastaccess", now), "mnethostid": 1} for u in users]
        self.execute(f"INSERT INTO {self.t('user')} (id, username, email, firstname, lastname, deleted, suspended, "
                     "lastaccess, mnethostid) VALUES (:id, :username, :email, :firstname, :lastname, :deleted, "
                     ":suspended, :lastaccess, :mnethostid)", rows)
        self.execute(f"INSERT INTO {self.t('company_users')} (companyid, userid) VALUES (:c, :u)",
                     [{"c": company_id, "u": u["id"]} for u in users])

    def queue_emails(self, rows: list[dict]) -> None:
        """IOMAD email rows: userid, companyid and optionally templatename, subject, body, senderid,
        headers (a dict, PHP-serialised here, or a raw string), due, varsreplaced."""
        now = int(time.time())
        prepared = []
        for r in rows:
            headers = r.get("headers")
            if isinstance(headers, (dict, list)):
                headers = dumps(headers)
            prepared.append({"templatename": r.get("templatename", "course_completed_manager"),
                             "modifiedtime": now, "subject": r.get("subject", "Hello"),
                             "body": r.get("body", "<p>Hello</p>"), "varsreplaced": r.get("varsreplaced", 1),
                             "userid": r["userid"], "senderid": r.get("senderid"), "headers": headers,
                             "due": r.get("due", now - 60), "companyid": r["companyid"]})
        self.execute(f"INSERT INTO {self.t('email')} (templatename, modifiedtime, subject, body, varsreplaced, "
                     "userid, senderid, headers, due, companyid) VALUES (:templatename, :modifiedtime, :subject, "
                     ":body, :varsreplaced, :userid, :senderid, :headers, :due, :companyid)", prepared)

    def emails(self, company_id: int | None = None) -> list:
        where = "" if company_id is None else f" WHERE companyid = {int(company_id)}"
        return self.all(f"SELECT id, userid, sent, modifiedtime, templatename, companyid FROM {self.t('email')}"
                        f"{where} ORDER BY id")

    def set_iomad_task(self, disabled: int) -> None:
        self.execute(f"UPDATE {self.t('task_scheduled')} SET disabled = :d WHERE classname = :c",
                     {"d": disabled, "c": IOMAD_EMAIL_TASK})
