"""The admin's audit log names each entry's company, and reads the page's companies in one query
(a read per row was most of the page's time with 50 companies' entries on it)."""
from __future__ import annotations

from sqlalchemy import event

from core import audit
from core.db import db

COMPANIES = 30


def test_the_admin_audit_page_reads_its_companies_at_once(app, client, make_company, make_user, auth):
    made = [make_company(f"Audited {n:02d}") for n in range(COMPANIES)]
    for c in made:
        audit.record("job_created", company_id=c.id, object_type="job", object_id="1", actor="api")
    db.session.commit()
    user, password = make_user("root@offload.test", role="admin")
    auth.login(user.email, password)

    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        page = client.get("/admin/audit/")
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert all(f"Audited {n:02d}" in html for n in range(COMPANIES))
    reads = [s for s in statements if "FROM companies" in s]
    assert len(reads) <= 2, reads  # the page's companies at once (and the signed-in user's own, if any)
