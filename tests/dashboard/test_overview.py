"""The overview's last week per company (core.overview): sent, failed, bounced and
queued per UTC day as server-drawn charts, and what waits now; a manager sees only
their company, an admin every company."""
from __future__ import annotations

from datetime import timedelta

from core import overview
from core.db import db
from core.delivery.results import record_event
from core.models import HARD, Job, Recipient, utcnow
from tests.support.app import AuthActions, run_worker_burst
from tests.support.servers import SmtpSink


def test_the_last_week_per_company_as_charts(app, client, make_company, make_user):
    with SmtpSink(refuse={"refused@example.com": "554 refused"}) as sink:
        company = make_company("Week Co", provider="smtp", sender="noreply@week.test", smtp_host="127.0.0.1",
                               smtp_port=sink.port, smtp_tls="none")
        other = make_company("Quiet Co")
        emails = [f"u{i}@example.com" for i in range(5)] + ["refused@example.com"]
        assert client.post("/api/v1/jobs", headers=company.auth, json={
            "type": "notification", "subject": "Hi", "body_text": "x",
            "recipients": [{"email": e} for e in emails]}).status_code == 202
        run_worker_burst(app)
        waits = client.post("/api/v1/jobs", headers=company.auth, json={  # accepted, no worker has run since
            "type": "notification", "subject": "Hi", "body_text": "x", "recipients": [{"email": "later@example.com"}]})
        assert waits.status_code == 202
    old = Job(company_id=company.id, type="notification", subject="old", created_at=utcnow() - timedelta(days=9),
              status="failed", email_count=1, emails_failed=1)
    db.session.add(old)
    db.session.flush()
    db.session.add(Recipient(company_id=company.id, job_id=old.id, email="old@example.com", status="failed"))
    db.session.commit()
    # a hard-bounce report about one that was sent: bounced, no longer sent, on the day it was sent
    assert record_event(company.id, source="ses", key="b1", kind=HARD, email="u1@example.com")

    (week,) = overview.week(company.id)
    assert [week.total(s) for s in overview.SERIES] == [4, 1, 1, 7]  # the 9-day-old job is not in the week
    assert week.counts["sent"][-1] == 4 and week.waiting == 1 and len(week.days) == 7
    assert [w.name for w in overview.week(None)] == ["Week Co", "Quiet Co"]

    make_user("m@week.test", company_id=company.id)
    AuthActions(client).login("m@week.test", "correct horse battery")
    html = client.get("/admin/").get_data(as_text=True)
    today = week.days[-1].isoformat()
    assert f'data-day="{today}" data-count="4"' in html and "<svg" in html
    assert 'data-total="failed">1<' in html and "Quiet Co" not in html
    assert other.id not in [w.company_id for w in overview.week(company.id)]
