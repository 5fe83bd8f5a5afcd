"""SIGKILL workers while they take over IOMAD's email queue (MariaDB): every
row is sent and marked, none is taken twice, and what reaches the provider
twice is bounded by what was in flight (counted as uncertain)."""
from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from sqlalchemy import text

from core import companies
from core.db import db
from core.delivery.recovery import unplanned_jobs
from core.queue import connection
from tasks.rq_queue import get_queue
from tests.support.faults import delivered, lost_and_duplicated
from tests.support.jobs import aws_settings
from tests.support.moodle import MoodleDb

ROWS = 2000
KILLS = 6
IOMAD = 5


def stuck() -> str:
    """Where the unmarked rows' recipients and their batches stand (for a failure's message)."""
    recipients = db.session.execute(text(
        "SELECT r.status, count(*) FROM lms_email_rows l LEFT JOIN recipients r ON r.id = l.recipient_id "
        "WHERE l.marked_at IS NULL GROUP BY r.status")).all()
    batches = db.session.execute(text("SELECT status, count(*) FROM batches GROUP BY status")).all()
    jobs = db.session.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    waiting = db.session.execute(text("SELECT id FROM jobs WHERE status = 'queued'")).scalars().all()
    db.session.commit()
    plans = {}
    for job_id in waiting:  # what RQ holds of each waiting job's planning
        try:
            rq_job = RQJob.fetch(f"plan-{job_id}", connection=connection())
            queue = get_queue(rq_job.origin)
            plans[job_id] = (rq_job.get_status(), rq_job.execution_registry.get_execution_ids(),
                             connection().lpos(queue.key, rq_job.id),
                             connection().lpos(queue.intermediate_queue_key, rq_job.id))
        except NoSuchJobError:
            plans[job_id] = None
    return (f"unmarked rows' recipients {dict(recipients)}; batches {dict(batches)}; jobs {dict(jobs)}; "
            f"plans {plans}; unplanned {unplanned_jobs()}; poll lock ttl {connection().pttl('offload:lms-poll:1')} ms")


def progress() -> int:
    """Rows taken plus rows marked: 0 … 2 × ROWS."""
    n = db.session.execute(text("SELECT count(*) + count(marked_at) FROM lms_email_rows")).scalar()
    db.session.commit()
    return n


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_workers_mid_takeover_loses_nothing_and_takes_each_row_once(app, make_company, ses, fleet,
                                                                             fault_report):
    moodle = MoodleDb("mysql", "mdl_")
    try:
        moodle.add_company(IOMAD, "Acme IOMAD")
        users = [{"id": 100 + i, "email": f"learner{i}@acme.test"} for i in range(ROWS)]
        moodle.add_users(users, IOMAD)
        moodle.queue_emails([{"userid": u["id"], "companyid": IOMAD, "templatename": "user_create",
                              "subject": f"Welcome {u['id']}", "body": f"<p>Your password: Pw{u['id']}</p>"}
                             for u in users])
        company = make_company("Acme Learning", **aws_settings(ses.url))
        companies.configure(company.company, {"lms_url": moodle.url, "iomad_company_id": str(IOMAD),
                                              "iomad_email_queue": "1"})
        db.session.commit()
        started = time.monotonic()
        workers = fleet(2, OFFLOAD_LMS_POLL_S=1, OFFLOAD_LMS_CHUNK=100, OFFLOAD_ALLOW_PRIVATE_ENDPOINTS=1)
        for point in sorted(random.uniform(0.05, 0.9) for _ in range(KILLS)):
            deadline = time.monotonic() + 120
            while progress() < point * 2 * ROWS:
                assert time.monotonic() < deadline, f"no progress: {progress()}\n{workers.log_tail()}"
                time.sleep(0.05)
            live = workers.pids()
            if live:
                workers.kill(random.choice(live))
        deadline = time.monotonic() + 240
        reported = time.monotonic() + 60
        while sum(1 for r in moodle.emails(IOMAD) if r.sent is not None) < ROWS:
            if time.monotonic() > reported:
                print(f"after 60 s: {progress()}; {stuck()}", flush=True)
                reported = deadline
            assert time.monotonic() < deadline, f"rows left unmarked: {progress()}; {stuck()}\n{workers.log_tail()}"
            time.sleep(0.5)
        wall = time.monotonic() - started

        taken = Counter(db.session.execute(text("SELECT lms_row_id FROM lms_email_rows")).scalars())
        statuses = Counter(db.session.execute(text("SELECT status FROM lms_email_rows")).scalars())
        uncertain = db.session.execute(text("SELECT coalesce(sum(emails_uncertain), 0) FROM jobs")).scalar()
        db.session.commit()
        got = delivered(ses.store())
        lost, duplicated = lost_and_duplicated({u["email"] for u in users}, got)
        fault_report("lms_takeover_sigkill", recipients=ROWS, faults=workers.kills, lost=lost, duplicated=duplicated,
                     wall=wall, uncertain=uncertain)
        assert len(taken) == ROWS and max(taken.values()) == 1  # each row taken exactly once
        assert statuses == {"sent": ROWS}
        assert lost == 0 and duplicated <= uncertain
    finally:
        moodle.drop()
