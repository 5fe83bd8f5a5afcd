"""The scheduler's properties (CONTRACT §6): transactional before bulk, fair
shares between companies, no worker asleep on a rate while other work waits,
and a company's transactional mail ahead of its own bulk mail.

The ready set runs on the real Redis; the pipeline tests send through the
real database, RQ and aws-ses-v2-local with an in-process burst worker
(``tests/tasks/test_scheduler_stack.py`` runs two worker processes).
"""
from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from core import scheduler
from core.db import db
from core.delivery import limits
from core.models import Batch, Job, Recipient
from core.queue import connection
from tests.support.app import run_worker_burst
from tests.support.jobs import BODY, aws_settings, people


def submit(client, company, n: int, prefix: str, **extra) -> int:
    resp = client.post("/api/v1/jobs", headers=company.auth, json={**BODY, "recipients": people(n, prefix), **extra})
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


# -- the ready set on its own --------------------------------------------------

def test_transactional_work_of_any_company_goes_before_bulk(app):
    conn = connection()
    scheduler.add(conn, [scheduler.Entry("bulk", 1, b, 200) for b in range(1, 251)])
    scheduler.add(conn, [scheduler.Entry("transactional", 2, 900, 5)])
    first = scheduler.pop(conn)
    assert (first.klass, first.company_id, first.batch_ids) == ("transactional", 2, [900])
    assert scheduler.pop(conn).klass == "bulk"


def test_one_companys_250_batches_do_not_starve_another_companys_single_batch(app):
    conn = connection()
    scheduler.add(conn, [scheduler.Entry("bulk", 1, b, 200) for b in range(1, 251)])
    assert [scheduler.pop(conn).company_id for _ in range(3)] == [1, 1, 1]
    scheduler.add(conn, [scheduler.Entry("bulk", 2, 999, 200)])
    assert 2 in [scheduler.pop(conn).company_id for _ in range(2)]  # within a round, not after 247 batches


def test_fair_shares_are_by_recipients_and_an_idle_spell_earns_no_credit(app):
    conn = connection()
    scheduler.add(conn, [scheduler.Entry("bulk", 1, b, 100) for b in range(1, 41)])
    scheduler.add(conn, [scheduler.Entry("bulk", 2, b, 200) for b in range(101, 121)])
    served = Counter()
    for _ in range(30):
        p = scheduler.pop(conn)
        served[p.company_id] += 100 if p.company_id == 1 else 200
    assert abs(served[1] - served[2]) <= 200  # equal recipients, not equal batch counts
    for _ in range(30):
        scheduler.pop(conn)
    assert scheduler.pop(conn) is None
    scheduler.add(conn, [scheduler.Entry("bulk", 1, 500, 100)])  # company 2 stayed away meanwhile...
    scheduler.add(conn, [scheduler.Entry("bulk", 3, 600, 100), scheduler.Entry("bulk", 3, 601, 100)])
    order = [scheduler.pop(conn).company_id for _ in range(3)]
    assert order.count(3) == 2 and order.index(1) <= 1  # ...and company 3 comes in at the least-served level


def test_offload_submissions_come_out_ten_of_a_company_at_a_time(app):
    conn = connection()
    scheduler.add(conn, [scheduler.Entry("bulk", 4, b, 200, scheduler.SUBMIT) for b in range(1, 13)])
    first = scheduler.pop(conn)
    assert first.kind == scheduler.SUBMIT and first.batch_ids == list(range(1, 11))
    assert scheduler.pop(conn).batch_ids == [11, 12]


def test_entries_not_yet_due_wait_and_say_when(app):
    conn = connection()
    scheduler.add(conn, [scheduler.Entry("bulk", 1, 7, 10, due=4_000_000_000)])
    assert not scheduler.runnable(conn)
    assert scheduler.pop(conn) == 4_000_000_000.0
    assert scheduler.contains(conn, "bulk", 1, 7) and not scheduler.contains(conn, "transactional", 1, 7)


# -- through the pipeline --------------------------------------------------------

def sent_order(job_ids: list[int]) -> list[int]:
    """Job id of each sent recipient, in the order they were sent."""
    rows = db.session.execute(select(Recipient.job_id).where(Recipient.job_id.in_(job_ids), Recipient.status == "sent")
                              .order_by(Recipient.sent_at, Recipient.id)).scalars().all()
    return list(rows)


def test_transactional_before_bulk_through_the_pipeline(app, client, make_company, ses, set_settings):
    set_settings(batch_size=100)
    a = make_company(**aws_settings(ses.url))
    b = make_company(**aws_settings(ses.url))
    campaign = submit(client, a, 600, "camp", type="reengagement")
    password = submit(client, b, 5, "pw")
    assert db.session.get(Job, campaign).priority == "bulk" and db.session.get(Job, password).priority == \
        "transactional"
    run_worker_burst(app)
    order = sent_order([campaign, password])
    assert len(order) == 605 and order[:5] == [password] * 5


def test_two_equal_campaigns_progress_together(app, client, make_company, ses, set_settings):
    set_settings(batch_size=20)
    a = make_company(**aws_settings(ses.url))
    b = make_company(**aws_settings(ses.url))
    first = submit(client, a, 400, "a", type="reengagement")
    second = submit(client, b, 400, "b", priority="bulk")
    run_worker_burst(app)
    done = db.session.execute(select(Batch.job_id).order_by(Batch.completed_at, Batch.id)).scalars().all()
    assert len(done) == 40
    last = {job: max(i for i, j in enumerate(done) if j == job) for job in (first, second)}
    assert abs(last[first] - last[second]) <= 4  # within 10% of the 40 batches
    assert len(ses.store()) == 800


def test_no_worker_naps_on_a_rate_while_other_work_waits(app, client, make_company, ses, monkeypatch, set_settings):
    set_settings(batch_size=20)
    slow = make_company(**aws_settings(ses.url), max_send_rate=1)  # six recipients: five seconds at least
    fast = make_company(**aws_settings(ses.url))
    naps = Counter()
    real_nap = limits.nap

    def counted_nap(seconds):
        naps["all"] += 1
        if limits.other_work_waiting(exclude_company=slow.id):
            naps["while_other_work_waited"] += 1
        real_nap(seconds)

    monkeypatch.setattr(limits, "nap", counted_nap)
    limited = submit(client, slow, 6, "slow", type="reengagement")
    free = submit(client, fast, 100, "fast", type="reengagement")
    run_worker_burst(app)
    assert db.session.get(Job, limited).status == "completed" and db.session.get(Job, free).status == "completed"
    assert naps["while_other_work_waited"] == 0
    assert naps["all"] > 0  # it did wait for the slow company's tokens, once nothing else was left
    order = sent_order([limited, free])
    assert order[-1] == limited and Counter(order[:10])[free] >= 8
    [attempts] = db.session.execute(select(Batch.attempts).where(Batch.job_id == limited)).scalars().all()
    assert attempts == 1  # given back to wait for tokens several times: no attempt counted for that


def test_a_companys_transactional_mail_takes_its_rate_before_its_bulk_mail(app, client, make_company, ses,
                                                                           set_settings):
    set_settings(batch_size=20)
    company = make_company(**aws_settings(ses.url), max_send_rate=10)
    campaign = submit(client, company, 60, "camp", type="reengagement")
    password = submit(client, company, 5, "pw")
    run_worker_burst(app)
    order = sent_order([campaign, password])
    assert len(order) == 65
    assert order.index(password) == 0 and order[:5] == [password] * 5
