"""Fast bulk writes: COPY on PostgreSQL, Core executemany elsewhere, and
``id = ANY(:ids)`` updates (``IN`` on SQLite)."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from sqlalchemy import Table, bindparam, insert, text
from sqlalchemy.exc import IntegrityError

from core import crypto
from core.db import db
from core.models import Recipient

COPY_MIN_ROWS = 100  # below this, COPY's extra round trips cost more than a plain INSERT
RECIPIENT_COLUMNS = ("company_id", "job_id", "email", "data", "status", "error", "attempts")


def is_postgres() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def insert_recipients(rows: Sequence[tuple]) -> None:
    """Insert recipient rows ``(company_id, job_id, email, data_dict, status, error)``
    in the current transaction; ``data`` is encrypted here."""
    if not rows:
        return
    if is_postgres() and len(rows) >= COPY_MIN_ROWS:
        dbapi = db.session.connection().connection.driver_connection
        if dbapi is None:  # never: the session's connection is checked out
            raise RuntimeError("no driver connection")
        with dbapi.cursor() as cur:
            with cur.copy(f"COPY recipients ({', '.join(RECIPIENT_COLUMNS)}) FROM STDIN") as copy:
                for company_id, job_id, email, data, status, error in rows:
                    token = crypto.encrypt(json.dumps(data, separators=(",", ":"))) if data is not None else None
                    copy.write_row((company_id, job_id, email, token, status, error, 0))
        return
    db.session.execute(insert(Recipient.__table__), [
        {"company_id": c, "job_id": j, "email": e, "data": d, "status": s, "error": err, "attempts": 0}
        for c, j, e, d, s, err in rows])


def insert_rows(table: Table, rows: Sequence[dict]) -> None:
    """Insert ``rows`` (dicts with the same keys, every value given: COPY applies no Python-side default)
    into ``table`` in the current transaction: COPY on PostgreSQL from ``COPY_MIN_ROWS`` rows (one round
    trip instead of one statement per row), else Core executemany. A unique or foreign-key violation is
    raised as SQLAlchemy's ``IntegrityError`` either way."""
    if not rows:
        return
    if not (is_postgres() and len(rows) >= COPY_MIN_ROWS):
        db.session.execute(insert(table), list(rows))
        return
    columns = list(rows[0])
    dbapi = db.session.connection().connection.driver_connection
    if dbapi is None:  # never: the session's connection is checked out
        raise RuntimeError("no driver connection")
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with dbapi.cursor() as cur:
            with cur.copy(sql) as copy:
                for row in rows:
                    copy.write_row(tuple(row[c] for c in columns))
    except type(dbapi).IntegrityError as exc:  # psycopg's, raised past SQLAlchemy's wrapping
        raise IntegrityError(sql, None, exc) from exc


def ids_clause(column: str, ids: Iterable[int], param: str = "ids") -> tuple[str, dict]:
    """SQL fragment and params matching ``column`` against ``ids`` efficiently."""
    ids = list(ids)
    if is_postgres():
        return f"{column} = ANY(:{param})", {param: ids}
    return f"{column} IN :{param}", {param: ids}


def execute_for_ids(sql: str, ids: Sequence[int], params: dict | None = None):
    """Run ``sql`` (with ``{ids}`` where the id match goes) for ``ids``."""
    clause, id_params = ids_clause("id", ids)
    stmt = text(sql.format(ids=clause))
    if not is_postgres():
        stmt = stmt.bindparams(bindparam("ids", expanding=True))
    return db.session.execute(stmt, {**(params or {}), **id_params})
