"""One closer task for every company's windows (tasks.windows): LMS events and SMTP messages of 50
companies become their jobs in one pass, once, the longest waiting first."""
from __future__ import annotations

from datetime import timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select, text

from core import events, submissions
from core.db import db
from core.models import AuditLog, Job, Recipient, SmtpMessage, Suppression, WaitingEvent, utcnow
from core.queue import HIGH
from tasks.rq_queue import get_queue
from tasks.windows import close_windows
from tests.support.events import make_template

COMPANIES = 50


def event(i: int) -> dict:
    return {"event": "user_created", "email": f"learner{i}@example.com",
            "data": {"firstname": f"Ann{i}", "password": f"S3cret-{i}!"}}


def smtp_message(company_id: int, i: int) -> submissions.Taken:
    raw = f"From: noreply@acme.test\r\nSubject: Hello {i}\r\n\r\nHi\r\n".encode()
    return submissions.Taken(company_id, "notification", "noreply@acme.test", [f"user{i}@example.com"],
                             f"Hello {i}", raw, "127.0.0.1", None)


def store_smtp(messages: list[submissions.Taken]) -> None:
    """As the SMTP writer stores a group: one transaction, then the closer for the windows it touched."""
    conn = db.engine.raw_connection()
    try:
        submissions.store(messages, conn, db.engine.dialect)
    finally:
        conn.close()
    submissions.Closers().after_commit(submissions.windows_touched(messages))


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_fifty_companies_windows_are_closed_by_one_task(app, make_company, set_settings):
    set_settings(bulk_window_s=30.0, bulk_threshold=10)
    companies = [make_company(f"Company {n}", sender="noreply@acme.test", provider="smtp") for n in range(COMPANIES)]
    for c in companies:
        make_template(c.id, "csv_import")
    intake = events.Intake(db.engine)
    for n, c in enumerate(companies):
        intake.accept(c.token, event(n))
    store_smtp([smtp_message(c.id, n) for n, c in enumerate(companies)])
    assert count(WaitingEvent) == COMPANIES

    # 100 windows, a closer per tick across processes: not one per window (the accepts took a few ticks
    # at most; the SMTP writer's closer is the tick the events' already asked for, or the next)
    scheduled = [get_queue(HIGH).fetch_job(i) for i in ScheduledJobRegistry(queue=get_queue(HIGH)).get_job_ids()]
    assert {j.func_name for j in scheduled} == {"tasks.windows.close_windows"}
    assert 1 <= len(scheduled) < 10 and all(j.args == () for j in scheduled)

    # not due yet: the pass closes nothing, and says when the first window will be due
    assert events.close_due_windows().jobs == [] and count(WaitingEvent) == COMPANIES
    not_yet = submissions.close_due_windows()
    assert not_yet.jobs == [] and not_yet.next_due is not None and not_yet.next_due > utcnow()

    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0)  # every window is due now
    done = close_windows()
    assert done == {"event_windows": COMPANIES, "events": COMPANIES, "smtp_windows": COMPANIES,
                    "jobs": 2 * COMPANIES}
    assert count(WaitingEvent) == 0
    waiting = db.session.execute(select(func.count()).where(SmtpMessage.status == "waiting")).scalar_one()
    assert waiting == 0
    made = db.session.execute(select(Job.company_id, Job.source, Job.email_count)).all()
    assert sorted(made) == sorted([(c.id, "event", 1) for c in companies] + [(c.id, "smtp", 1) for c in companies])

    # a second run (a retry, another worker) makes nothing twice
    assert close_windows() == {"event_windows": 0, "events": 0, "smtp_windows": 0, "jobs": 0}
    assert db.session.execute(select(func.count()).select_from(Job)).scalar_one() == 2 * COMPANIES


def test_a_pass_takes_the_longest_waiting_first_and_leaves_the_rest_for_the_next(app, make_company, set_settings):
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0, bulk_threshold=10)
    companies = [make_company(f"Company {n}", sender="noreply@acme.test", provider="smtp") for n in range(4)]
    for c in companies:
        make_template(c.id, "csv_import")
    intake = events.Intake(db.engine)
    for n, c in enumerate(companies):
        for i in range(3):
            intake.accept(c.token, event(10 * n + i))
    # the last company's window has waited longest
    db.session.execute(WaitingEvent.__table__.update().where(WaitingEvent.company_id == companies[-1].id)
                       .values(received_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()

    first = events.close_due_windows(budget=3)
    assert first.more and first.windows == 1 and {j.company_id for j in first.jobs} == {companies[-1].id}
    rest = events.close_due_windows(budget=3 * len(companies))
    assert not rest.more and rest.windows == 3 and rest.taken == 9
    assert count(WaitingEvent) == 0


class Commits:
    """Counts the session's commits (one transaction per window's jobs, not one per job)."""

    def __init__(self):
        self.n = 0

    def __call__(self, session):
        self.n += 1


def commits_of(fn):
    from sqlalchemy import event as sa_event

    counter = Commits()
    sa_event.listen(db.session(), "after_commit", counter)
    try:
        result = fn()
    finally:
        sa_event.remove(db.session(), "after_commit", counter)
    return result, counter.n


def test_a_window_of_single_events_becomes_its_jobs_in_one_transaction(app, make_company, set_settings):
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0, bulk_threshold=10)
    company = make_company("Acme", sender="noreply@acme.test", provider="smtp")
    make_template(company.id, "csv_import")
    intake = events.Intake(db.engine)
    for i in range(8):
        intake.accept(company.token, event(i))
    db.session.add(Suppression(company_id=company.id, email="learner3@example.com", reason="complaint"))
    db.session.commit()

    closed, commits = commits_of(lambda: events.close_window(company.id, "csv_import"))
    assert len(closed.jobs) == 8 and commits == 1
    assert count(WaitingEvent) == 0
    rows = db.session.execute(select(Job.id, Job.email_count, Job.emails_suppressed, Job.source, Job.template_name)
                              .order_by(Job.id)).all()
    assert [(r.email_count, r.source, r.template_name) for r in rows] == [(1, "event", "csv_import template")] * 8
    assert sum(r.emails_suppressed for r in rows) == 1  # the suppression read once applies to each job
    emails = db.session.execute(select(Recipient.job_id, Recipient.email).order_by(Recipient.id)).all()
    assert [e.email for e in emails] == [f"learner{i}@example.com" for i in range(8)]
    assert [e.job_id for e in emails] == [r.id for r in rows]  # each event its own job
    assert db.session.execute(select(Recipient.data).where(Recipient.email == "learner5@example.com")) \
        .scalar_one() == {"firstname": "Ann5", "password": "S3cret-5!"}
    audits = db.session.execute(select(AuditLog.object_id).where(AuditLog.action == "job_created")).scalars().all()
    assert sorted(audits) == sorted(str(r.id) for r in rows)
    assert events.close_window(company.id, "csv_import").jobs == []  # run twice: nothing twice


def test_an_event_whose_render_fails_at_close_is_dropped_and_the_others_become_jobs(app, make_company,
                                                                                     set_settings):
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0, bulk_threshold=10)
    company = make_company("Acme", sender="noreply@acme.test", provider="smtp")
    make_template(company.id, "csv_import", body_text="Hi {{ firstname }}, {{ 100 // n }} days left")
    intake = events.Intake(db.engine)
    for i, n in enumerate([5, 0, 4]):  # the process renders one sample only: the zero passes the accept
        intake.accept(company.token, {**event(i), "data": {**event(i)["data"], "n": n}})

    closed = events.close_window(company.id, "csv_import")
    assert len(closed.jobs) == 2 and closed.events == 3 and count(WaitingEvent) == 0
    assert sorted(db.session.execute(select(Recipient.email)).scalars()) == ["learner0@example.com",
                                                                              "learner2@example.com"]
    dropped = db.session.execute(select(AuditLog.details).where(AuditLog.action == "events_dropped")).scalar_one()
    assert dropped["events"] == 1 and dropped["reason"] == "template_error"


def test_events_another_closer_took_meanwhile_make_no_job_and_the_rest_still_do(app, make_company, set_settings):
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0, bulk_threshold=10)
    company = make_company("Acme", sender="noreply@acme.test", provider="smtp")
    tpl = make_template(company.id, "csv_import")
    intake = events.Intake(db.engine)
    for i in range(3):
        intake.accept(company.token, event(i))
    rows = db.session.execute(select(WaitingEvent.id, WaitingEvent.payload).order_by(WaitingEvent.id)).all()
    groups = [[(r.id, {"email": r.payload["email"], "data": r.payload["data"]})] for r in rows]
    db.session.rollback()
    db.session.execute(WaitingEvent.__table__.delete().where(WaitingEvent.id == rows[1].id))  # the other closer
    db.session.commit()

    assert events._create_all(company.id, "csv_import", tpl.name, groups) is None  # all or nothing
    assert count(Job) == 0 and count(WaitingEvent) == 2
    made = events.close_window(company.id, "csv_import").jobs  # the next pass: the two left, once
    assert len(made) == 2 and count(WaitingEvent) == 0 and count(Recipient) == 2


def test_a_window_of_single_smtp_messages_becomes_its_jobs_in_one_transaction(app, make_company, set_settings):
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0, bulk_threshold=10)
    company = make_company("Acme", sender="noreply@acme.test", provider="smtp")
    store_smtp([smtp_message(company.id, i) for i in range(6)])
    closed, commits = commits_of(lambda: submissions.close_window(company.id, "notification"))
    assert len(closed.jobs) == 6 and commits == 1
    messages = db.session.execute(select(SmtpMessage.id, SmtpMessage.status, SmtpMessage.job_id)
                                  .order_by(SmtpMessage.id)).all()
    assert {m.status for m in messages} == {"jobbed"}
    assert [m.job_id for m in messages] == sorted(j.id for j in closed.jobs)  # each message its own job
    by_job = dict(db.session.execute(select(Recipient.job_id, Recipient.data)).tuples().all())
    assert {job_id: data["smtp_message_id"] for job_id, data in by_job.items()} == \
        {m.job_id: m.id for m in messages}
    assert submissions.close_window(company.id, "notification").jobs == []  # run twice: nothing twice


def test_smtp_messages_another_closer_took_make_no_job(app, make_company, set_settings):
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0, bulk_threshold=10)
    company = make_company("Acme", sender="noreply@acme.test", provider="smtp")
    store_smtp([smtp_message(company.id, i) for i in range(3)])
    rows = db.session.execute(select(SmtpMessage.id, SmtpMessage.rcpt_to, SmtpMessage.subject)
                              .order_by(SmtpMessage.id)).all()
    db.session.execute(SmtpMessage.__table__.update().where(SmtpMessage.id == rows[2].id).values(status="jobbed"))
    assert submissions._jobs_of(company.id, "notification", [[r] for r in rows]) is None
    db.session.rollback()
    assert count(Job) == 0 and count(Recipient) == 0


def test_a_closer_skips_the_events_another_closer_is_taking(app, make_company, set_settings):
    """PostgreSQL: a second pass at the same window does not make the jobs again only to find the events
    gone at its delete; it skips the rows the first holds and makes the jobs of the others."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0, bulk_threshold=10)
    company = make_company("Acme", sender="noreply@acme.test", provider="smtp")
    make_template(company.id, "csv_import")
    intake = events.Intake(db.engine)
    for i in range(4):
        intake.accept(company.token, event(i))
    store_smtp([smtp_message(company.id, i) for i in range(2)])
    first = db.engine.connect()  # the other closer, mid-transaction
    try:
        first.execute(text("SELECT id FROM waiting_events ORDER BY id LIMIT 3 FOR UPDATE"))
        first.execute(text("SELECT id FROM smtp_messages FOR UPDATE"))
        made = events.close_window(company.id, "csv_import").jobs
        assert [j.email_count for j in made] == [1] and count(WaitingEvent) == 3  # the fourth alone
        assert submissions.close_window(company.id, "notification").jobs == []
    finally:
        first.rollback()
        first.close()
    assert len(events.close_window(company.id, "csv_import").jobs) == 3
    assert len(submissions.close_window(company.id, "notification").jobs) == 2
    assert count(Job) == 6 and count(WaitingEvent) == 0
