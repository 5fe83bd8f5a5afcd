"""``core.bulk.insert_rows``: COPY on PostgreSQL from ``COPY_MIN_ROWS`` rows, executemany below it and on
SQLite; either way the rows land whole, and a unique violation is SQLAlchemy's ``IntegrityError`` (what the
LMS take-over catches when another poll took the same rows first)."""
from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from core.bulk import COPY_MIN_ROWS, insert_rows
from core.db import db
from core.models import LmsEmailRow, utcnow
from core.models.lms import ROW_QUEUED


def rows(company_id: int, ids: range) -> list[dict]:
    now = utcnow()
    return [{"company_id": company_id, "lms_row_id": i, "templatename": "user_create", "job_id": None,
             "recipient_id": None, "status": ROW_QUEUED, "created_at": now} for i in ids]


@pytest.mark.parametrize("n", [COPY_MIN_ROWS - 1, COPY_MIN_ROWS + 50])
def test_insert_rows_lands_every_row_and_refuses_a_duplicate(app, make_company, n):
    company = make_company("Acme").company
    insert_rows(LmsEmailRow.__table__, rows(company.id, range(1, n + 1)))
    db.session.commit()
    found = db.session.execute(LmsEmailRow.scoped(company.id).order_by(LmsEmailRow.lms_row_id)).scalars().all()
    assert [r.lms_row_id for r in found] == list(range(1, n + 1))
    assert {(r.status, r.templatename, r.job_id) for r in found} == {(ROW_QUEUED, "user_create", None)}

    with pytest.raises(IntegrityError):  # one row already taken: the whole insert is refused
        insert_rows(LmsEmailRow.__table__, rows(company.id, range(n, n + COPY_MIN_ROWS + 1)))
        db.session.flush()
    db.session.rollback()
    assert db.session.query(LmsEmailRow).filter_by(company_id=company.id).count() == n
