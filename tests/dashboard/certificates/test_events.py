"""course_completed events become certificate jobs (core.events), which issue and
mail certificates exactly like API jobs."""
from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from core.db import db
from core.models import Certificate, Job
from tests.support.certificates import DOWNLOAD_LINK, ses_settings
from tests.support.events import drain, make_template


def completion(i: int) -> dict:
    return {"event": "course_completed", "email": f"grad{i}@example.com",
            "data": {"firstname": f"Grad{i}", "lastname": "Student", "course_name": "Data Protection",
                     "completion_date": "2026-11-22"},
            "occurred_at": "2026-11-22T10:30:00Z"}


def test_course_completed_events_issue_and_mail_certificates(app, client, make_company, ses, s3_bucket, set_settings):
    set_settings(bulk_window_s=1.0, bulk_threshold=10)
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    make_template(company.id, "certificate", subject="Your {{ course_name }} certificate",
                  body_text="Well done {{ firstname }}!", body_html=None)
    for i in range(14):
        assert client.post("/api/v1/events", json=completion(i), headers=company.auth).status_code == 202
    drain(app)
    jobs = db.session.execute(Job.scoped(company.id)).scalars().all()
    assert {j.type for j in jobs} == {"certificate"} and {j.status for j in jobs} == {"completed"}
    assert sum(j.email_count for j in jobs) == 14
    certs = {c.learner_email: c for c in db.session.execute(select(Certificate)).scalars()}
    assert len(certs) == 14 and certs["grad3@example.com"].learner_name == "Grad3 Student"
    store = ses.store()
    assert Counter(m["destination"]["to"][0] for m in store) == {f"grad{i}@example.com": 1 for i in range(14)}
    for mail in store:
        assert DOWNLOAD_LINK.findall(mail["body"]["text"]) == [certs[mail["destination"]["to"][0]].code]
