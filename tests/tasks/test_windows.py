"""One closer task for every company's windows (tasks.windows): LMS events and SMTP messages of 50
companies become their jobs in one pass, once, the longest waiting first."""
from __future__ import annotations

from datetime import timedelta

from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select

from core import events, submissions
from core.db import db
from core.models import Job, SmtpMessage, WaitingEvent, utcnow
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
