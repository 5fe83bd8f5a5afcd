"""The counts kept as sends happen (core.sendstats) agree with the recipients' rows, whatever moved
them: a provider's answers, an address refused at acceptance, a bounce report after the send, a
retry of the failed ones."""
from __future__ import annotations

from sqlalchemy import func, select

from core import sendstats
from core.db import db
from core.delivery.results import record_event
from core.jobs import retry_failed
from core.models import HARD, CompanyDay, Job, Recipient, utcnow
from tests.support.app import run_worker_burst
from tests.support.servers import SmtpSink


def day_totals(company_id: int) -> dict[str, int]:
    row = db.session.execute(select(func.sum(CompanyDay.sent), func.sum(CompanyDay.failed),
                                    func.sum(CompanyDay.bounced)).where(CompanyDay.company_id == company_id)).one()
    return dict(zip(("sent", "failed", "bounced"), (int(n or 0) for n in row), strict=True))


def rows(job_id: int, *statuses: str) -> int:
    return db.session.execute(select(func.count()).select_from(Recipient).where(
        Recipient.job_id == job_id, Recipient.status.in_(statuses))).scalar()


def test_the_counts_follow_every_change_of_status(app, client, make_company):
    with SmtpSink(refuse={"refused@example.com": "554 5.7.1 refused"}) as sink:
        company = make_company("Stats Co", provider="smtp", sender="noreply@stats.test", smtp_host="127.0.0.1",
                               smtp_port=sink.port, smtp_tls="none")
        resp = client.post("/api/v1/jobs", headers=company.auth, json={
            "type": "notification", "subject": "Hi", "body_text": "x",
            "recipients": [{"email": f"u{i}@example.com"} for i in range(6)]
            + [{"email": "refused@example.com"}, {"email": "not an address"}]})
        job_id = resp.get_json()["id"]
        run_worker_burst(app)
        job = db.session.get(Job, job_id)
        assert (job.emails_sent, job.emails_failed) == (6, 2)
        assert day_totals(company.id) == {"sent": 6, "failed": 2, "bounced": 0}
        assert sum(n for _, n in sendstats.job_seconds(job_id)) == rows(job_id, "sent") == 6
        assert sendstats.sent_since([job_id], utcnow().replace(hour=0, minute=0)) == {job_id: 6}

        sent = db.session.execute(select(Recipient).where(Recipient.job_id == job_id,
                                                          Recipient.email == "u3@example.com")).scalar_one()
        assert record_event(company.id, source="ses", key="b-1", kind=HARD, email=sent.email,
                            message_id=sent.message_id, detail="550 5.1.1")
        # bounced now, on the day and second it was handed over; /metrics counts it failed
        assert day_totals(company.id) == {"sent": 5, "failed": 2, "bounced": 1}
        assert sum(n for _, n in sendstats.job_seconds(job_id)) == rows(job_id, "sent") == 5
        assert sendstats.handed_since(company.id, utcnow().date()) == (5, 1) == (rows(job_id, "sent"),
                                                                             rows(job_id, "bounced"))
        (route, *figures) = [r for r in sendstats.by_route() if r[0] == "direct:smtp"][0]
        assert figures == [5, 1, 1, 0]  # the refusal failed on the route; the report's bounce stays on it

        db.session.expire_all()
        assert retry_failed(db.session.get(Job, job_id)) == 1  # the refused one (not the bad address)
        assert day_totals(company.id)["failed"] == 1 == rows(job_id, "failed")
        run_worker_burst(app)
    db.session.expire_all()
    job = db.session.get(Job, job_id)
    assert job.emails_failed == rows(job_id, "failed") == day_totals(company.id)["failed"] == 2
