"""Which way a batch goes is decided in one place: ``routing.way``, and ``WAY_SQL`` says
the same to the queries that ask it of many batches (the sweep, a resume, lost submissions)."""
from __future__ import annotations

import itertools

import pytest
from sqlalchemy import text

from core.db import db
from core.delivery import routing
from core.delivery.plan import create_batches
from core.jobs import create_job
from core.models import Company, Job

SQS = {"provider": "ses", "sqs_queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/offload"}


@pytest.mark.parametrize("mode,enabled,source", itertools.product(("direct", "offload"), (True, False),
                                                                 ("api", "lms", "smtp")))
def test_python_and_sql_agree(make_company, mode, enabled, source):
    company = make_company(sender="noreply@acme.test", mode=mode, **SQS)
    job, _ = create_job(company.id, {"type": "notification", "subject": "Hi", "body_text": "Hello",
                                     "recipients": [{"email": "ann@acme.test"}]}, source=source)
    create_batches(job.id, 10)
    settings_row = db.session.get(Company, company.id).settings
    settings_row.enabled = enabled
    db.session.commit()
    sql = db.session.execute(text(f"SELECT {routing.WAY_SQL} {routing.BATCH_WAY_FROM} WHERE b.job_id = :j"),
                             {"j": job.id}).scalar()
    python = routing.way_of(db.session.get(Job, job.id).source, settings_row)
    assert sql == python
    assert python == (routing.SUBMIT if (mode, enabled, source != "lms") == ("offload", True, True)
                      else routing.SEND)


def test_no_settings_means_sent_here(make_company):
    company = make_company()
    job, _ = create_job(company.id, {"type": "notification", "subject": "Hi", "body_text": "Hello",
                                     "recipients": [{"email": "ann@acme.test"}]})
    create_batches(job.id, 10)
    db.session.execute(text("DELETE FROM delivery_settings WHERE company_id = :c"), {"c": company.id})
    db.session.commit()
    assert db.session.execute(text(f"SELECT {routing.WAY_SQL} {routing.BATCH_WAY_FROM} WHERE b.job_id = :j"),
                              {"j": job.id}).scalar() == routing.way_of("api", None) == routing.SEND
