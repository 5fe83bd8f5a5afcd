"""Sending keeps its share of the workers while plans wait (issue 24): a small transactional job is sent
by its plan task, a worker busy with urgent jobs takes a waiting wake-up after its turn, and a wake-up
works its turn before it makes room for urgent work."""
from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from core import queue, scheduler
from core.db import db
from core.delivery import ready
from core.models import Batch, Job, Recipient
from core.queue import DEFAULT, HIGH, LOW, QUEUE_NAMES, SEND, connection
from tasks.rq_queue import get_queue
from tasks.worker import AppWorker
from tests.support.app import run_worker_burst
from tests.support.jobs import BODY, aws_settings, people


def submit(client, company, recipients, **extra) -> int:
    resp = client.post("/api/v1/jobs", json={**BODY, "recipients": recipients, **extra}, headers=company.auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def statuses(job_id: int) -> Counter:
    db.session.expire_all()
    return Counter(db.session.execute(select(Recipient.status).where(Recipient.job_id == job_id)).scalars())


def ready_batches() -> int:
    return sum(connection().zcard(k) for k in connection().scan_iter(f"{scheduler.PREFIX}:lane:*"))


def test_a_small_transactional_job_is_sent_by_its_plan_task(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(5))
    run_worker_burst(app, max_jobs=1)  # the plan task alone: no wake-up ran
    assert statuses(job_id) == Counter({"sent": 5}) and len(ses.store()) == 5
    assert db.session.get(Job, job_id).status == "completed"
    assert ready_batches() == 0  # nothing was left in the ready set for a wake-up
    run_worker_burst(app)  # the wake-ups queued meanwhile find nothing to send twice
    assert len(ses.store()) == 5


def test_a_plan_tasks_send_that_breaks_puts_its_batch_in_the_ready_set(app, client, make_company, ses, monkeypatch):
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(2))

    def broken(batch_id, run):
        raise RuntimeError("the send broke")

    monkeypatch.setattr(ready, "run_claimed", broken)
    run_worker_burst(app, max_jobs=1)  # the plan task: its send raised
    assert statuses(job_id) == Counter({"pending": 2}) and len(ses.store()) == 0
    assert ready_batches() == 1  # the batch waits in the ready set for its retry, not lost


def test_bulk_and_multi_batch_jobs_go_through_the_ready_set(app, client, make_company, ses, set_settings):
    set_settings(batch_size=3)
    company = make_company(**aws_settings(ses.url))
    big = submit(client, company, people(5))  # two batches
    bulk = submit(client, make_company("Other", **aws_settings(ses.url)), people(2, "news"),
                  priority="bulk", type="reengagement")
    run_worker_burst(app, max_jobs=2)  # the two plan tasks
    assert statuses(big) == Counter({"pending": 5}) and statuses(bulk) == Counter({"pending": 2})
    assert db.session.execute(select(Batch.id)).scalars().all() and ready_batches() == 3
    run_worker_burst(app)
    assert statuses(big) == Counter({"sent": 5}) and statuses(bulk) == Counter({"sent": 2})


def test_a_worker_busy_with_urgent_jobs_takes_a_wake_up_after_its_turn(app, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("tasks.worker.time.monotonic", lambda: clock[0])
    worker = AppWorker([get_queue(n) for n in QUEUE_NAMES], connection=connection())
    order = lambda: [q.name for q in worker._ordered_queues]  # noqa: E731
    worker.reorder_queues(get_queue(DEFAULT))
    assert order() == [HIGH, DEFAULT, SEND, LOW]  # urgent first while its turn lasts
    clock[0] += queue.URGENT_TURN_S / 2
    worker.reorder_queues(get_queue(HIGH))
    assert order() == [HIGH, DEFAULT, SEND, LOW]
    clock[0] += queue.URGENT_TURN_S
    worker.reorder_queues(get_queue(DEFAULT))
    assert order() == [SEND, HIGH, DEFAULT, LOW]  # urgent work had its turn: a waiting wake-up next
    worker.reorder_queues(get_queue(SEND))
    assert order() == [HIGH, DEFAULT, SEND, LOW]  # after the wake-up, urgent work first again
    clock[0] += 60  # however long the wake-up ran, the urgent turn counts from its end
    worker.reorder_queues(get_queue(DEFAULT))
    assert order() == [HIGH, DEFAULT, SEND, LOW]
    clock[0] += queue.URGENT_TURN_S
    worker.reorder_queues(get_queue(LOW))
    assert order() == [SEND, HIGH, DEFAULT, LOW]


def test_a_wake_up_sends_for_its_turn_though_urgent_work_waits(app, client, make_company, ses, monkeypatch,
                                                               set_settings):
    set_settings(batch_size=2)
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(6))  # three batches: the ready set's
    run_worker_burst(app, max_jobs=1)
    monkeypatch.setattr(queue, "urgent_waiting", lambda: True)  # plans keep coming

    monkeypatch.setattr(queue, "SEND_TURN_S", 0.0)  # no turn: the wake-up makes room at once
    assert ready.work_ready() == {} and statuses(job_id) == Counter({"pending": 6})

    monkeypatch.setattr(queue, "SEND_TURN_S", 3600.0)  # a turn longer than the work: it all goes
    assert ready.work_ready()["done"] == 3
    assert statuses(job_id) == Counter({"sent": 6})
