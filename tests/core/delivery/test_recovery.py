"""Claims, leases, in-flight recovery, the sweep and data purge, unit by unit
(the fault tests in tests/faults break real processes)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import timedelta

import redis
from rq import SimpleWorker
from rq.job import Job as RQJob
from sqlalchemy import select, text, update

from core import settings
from core.db import db
from core.delivery import claims, recovery
from core.delivery.plan import plan_job
from core.delivery.recovery import unplanned_jobs
from core.delivery.send import send_batch
from core.models import Batch, Company, Job, Recipient, utcnow
from core.queue import DEFAULT, HIGH, connection, is_live, live_ids, schedule_lms_polls, schedule_sweep
from core.retention import purge_recipient_data
from providers import registry
from tasks import worker as worker_module
from tasks.rq_queue import POPPED_GRACE_S, get_queue, still_running
from tasks.sweep import sweep
from tasks.worker import run_worker
from tests.support.app import run_worker_burst
from tests.support.jobs import aws_settings


def make_job(client, company, n=10) -> int:
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Hi {{ name }}", "body_text": "pw {{ pw }}",
        "recipients": [{"email": f"u{i}@acme.test", "data": {"name": f"N{i}", "pw": f"secret{i}"}} for i in range(n)]})
    return resp.json["id"]


def test_one_batch_is_held_by_one_worker(app, client, company):
    job_id = make_job(client, company)
    connection().flushdb()
    plan_job(job_id)
    batch_id = db.session.execute(select(Batch.id)).scalar_one()
    first = claims.claim_send(batch_id, "worker-a", 60)
    assert first is not None and first.attempts == 1
    assert claims.claim_send(batch_id, "worker-b", 60) is None  # the lease decides, not RQ
    db.session.execute(update(Batch).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    taken = claims.claim_send(batch_id, "worker-b", 60)
    assert taken is not None and taken.attempts == 2
    assert not claims.renew(first, 60)  # the old holder finds out and stops


def crash_mid_chunk(job_id: int, n_in_flight: int) -> None:
    """What a SIGKILL between mark_sending and record_results leaves behind."""
    ids = db.session.execute(select(Recipient.id).where(Recipient.job_id == job_id).order_by(Recipient.id)
                             .limit(n_in_flight)).scalars().all()
    db.session.execute(update(Recipient).where(Recipient.id.in_(ids)).values(status="sending", attempts=1))
    db.session.execute(update(Batch).values(status="sending", leased_by="dead:1", attempts=1,
                                            lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()


def test_in_flight_recipients_become_uncertain_and_are_resent(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = make_job(client, company)
    connection().flushdb()
    plan_job(job_id)
    crash_mid_chunk(job_id, 4)
    batch_id = db.session.execute(select(Batch.id)).scalar_one()
    assert send_batch(batch_id) == "done"
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    assert job.status == "completed" and job.emails_uncertain == 4 and job.emails_sent == 10
    assert len(ses.store()) == 10


def test_uncertain_policy_fail_fails_them_for_review(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url), uncertain_policy="fail")
    job_id = make_job(client, company)
    connection().flushdb()
    plan_job(job_id)
    crash_mid_chunk(job_id, 3)
    send_batch(db.session.execute(select(Batch.id)).scalar_one())
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    assert job.status == "partial_failure" and job.emails_uncertain == 3
    errors = Counter(db.session.execute(select(Recipient.error).where(Recipient.status == "failed")).scalars())
    assert errors == Counter({"uncertain_delivery": 3})
    assert len(ses.store()) == 7


def test_sweep_rebuilds_the_queue_after_redis_lost_it(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = make_job(client, company, n=450)
    run_worker_burst(app, max_jobs=1)  # the plan ran: three batches queued in Redis
    connection().flushdb()  # Redis restarted with its data dropped
    db.session.execute(text("UPDATE batches SET status = 'queued'"))  # (already; made explicit)
    db.session.commit()
    recovery.GRACE_S = 0
    try:
        report = sweep()
    finally:
        recovery.GRACE_S = 10
    assert report["requeued"] == 3
    run_worker_burst(app)
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    assert job.status == "completed" and len(ses.store()) == 450


def test_sweep_requeues_expired_leases(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = make_job(client, company)
    connection().flushdb()
    plan_job(job_id)
    crash_mid_chunk(job_id, 2)
    connection().flushdb()
    assert sweep()["expired"] == 1
    run_worker_burst(app)
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    assert job.status == "completed" and job.emails_uncertain == 2


def test_recipient_data_is_purged_after_retention(app, client, company):
    old_job, new_job = make_job(client, company), make_job(client, company)
    db.session.execute(update(Job).values(status="completed"))
    db.session.execute(update(Job).where(Job.id == old_job).values(completed_at=utcnow() - timedelta(days=8)))
    db.session.execute(update(Job).where(Job.id == new_job).values(completed_at=utcnow() - timedelta(days=1)))
    db.session.commit()
    assert purge_recipient_data(7) == 1
    data = dict(db.session.execute(text("SELECT job_id, max(data) FROM recipients GROUP BY job_id")).all())
    assert data[old_job] is None and data[new_job] is not None
    # a company may keep data for less time
    db.session.get(Company, company.id).data_retention_days = 0
    db.session.commit()
    assert purge_recipient_data(7) == 1
    assert db.session.execute(text("SELECT count(*) FROM recipients WHERE data IS NOT NULL")).scalar() == 0
    assert db.session.get(Job, old_job).data_purged_at is not None


def test_rq_arguments_carry_ids_only(app, client, company):
    make_job(client, company)
    conn = connection()
    for key in conn.scan_iter("rq:job:*"):
        if b":" in key[len(b"rq:job:"):]:
            continue
        job = RQJob.fetch(key.decode().split(":", 2)[2], connection=conn)
        assert all(isinstance(a, (int, list)) for a in job.args), job.args
        assert not job.kwargs


def test_a_lease_shorter_than_a_provider_call_is_warned_about(app, caplog, set_settings):
    set_settings(lease_s=5)
    with caplog.at_level(logging.WARNING, logger="tasks.worker"):
        run_worker(app, burst=True)
    assert registry.call_timeout() >= 10 and "OFFLOAD_LEASE_S=5 is shorter" in caplog.text
    caplog.clear()
    set_settings(lease_s=120)
    with caplog.at_level(logging.WARNING, logger="tasks.worker"):
        run_worker(app, burst=True)
    assert "OFFLOAD_LEASE_S" not in caplog.text


def test_workers_ticking_on_one_slot_queue_its_periodic_jobs_once(app):
    """Every worker's scheduler thread ticks on the same clock slots: eight at once queue one
    sweep and one LMS poll round, not eight (RQ would run a twice-queued id twice)."""
    start = threading.Barrier(8)

    def tick() -> None:
        with app.app_context():
            start.wait()
            schedule_sweep(3600)
            schedule_lms_polls(3600)

    threads = [threading.Thread(target=tick) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = Counter(job_id.rsplit("-", 1)[0] for job_id in get_queue(HIGH).get_job_ids())
    assert queued == {"sweep": 1, "lms-polls": 1}


def test_a_plan_whose_worker_died_is_planned_again(app, client, company):
    """A worker SIGKILLed while planning leaves the RQ job ``started`` for RQ's ten-minute maintenance;
    once its heartbeat lapses the sweep no longer counts it as running and plans the job again."""
    job_id = make_job(client, company)
    db.session.execute(update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    rq_job = RQJob.fetch(f"plan-{job_id}", connection=connection())
    worker = SimpleWorker([get_queue(DEFAULT)], connection=connection())
    worker.prepare_job_execution(rq_job)
    execution = worker.prepare_execution(rq_job)  # what a worker does before it runs the job, then dies
    assert rq_job.get_status() == "started" and is_live(rq_job.id)
    assert job_id not in unplanned_jobs()  # a planner is at work

    # the heartbeat lapses: the started registry's entry for the execution expires
    connection().zadd(rq_job.started_job_registry.key, {execution.composite_key: 1})
    assert rq_job.get_status() == "started" and not is_live(rq_job.id)
    assert unplanned_jobs() == [job_id]


def test_a_plan_queued_in_no_list_is_planned_again(app, client, company):
    """The states a SIGKILL mid-dequeue left in the LMS kill test: RQ says ``queued`` while the id sits
    popped and never started, or is in no list at all; no worker will ever run it."""
    job_id = make_job(client, company)
    db.session.execute(update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    rq_id = f"plan-{job_id}"
    queue = get_queue(DEFAULT)
    assert is_live(rq_id) and job_id not in unplanned_jobs()
    connection().lmove(queue.key, queue.intermediate_queue_key)  # popped by a worker …
    assert is_live(rq_id) and job_id not in unplanned_jobs()
    popped = f"offload:popped:{rq_id}"  # … which never started it: seen popped beyond the grace
    connection().set(popped, time.time() - POPPED_GRACE_S - 1)
    assert unplanned_jobs() == [job_id]
    assert is_live(rq_id)  # a later pop of the id is timed afresh
    connection().delete(queue.intermediate_queue_key)  # RQ's maintenance dropped it from the list
    assert RQJob.fetch(rq_id, connection=connection()).get_status() == "queued"
    assert not is_live(rq_id) and unplanned_jobs() == [job_id]


def test_a_backlog_of_plans_is_checked_at_once(app, client, company):
    """The sweep checks every unplanned job's plan in a few round trips (each queue's list read once,
    not an LPOS per id): the same answer as ``is_live`` one by one, a lost one found among the rest."""
    ids = [make_job(client, company) for _ in range(5)]
    db.session.execute(update(Job).where(Job.id.in_(ids)).values(created_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    connection().lrem(get_queue(DEFAULT).key, 0, f"plan-{ids[2]}")  # lost by the queue
    rq_ids = [f"plan-{j}" for j in ids] + ["plan-999999"]
    assert live_ids(rq_ids) == {r for r in rq_ids if is_live(r)} == {f"plan-{j}" for j in ids if j != ids[2]}
    assert unplanned_jobs() == [ids[2]]


def test_a_running_jobs_execution_is_beaten_and_a_dead_workers_lapses(app, monkeypatch):
    """RQ's SimpleWorker gives a running job's execution the job's timeout plus 60 s to live; AppWorker
    beats it from a thread, so a long job stays running and a worker that died is seen dead within the TTL."""
    monkeypatch.setattr(worker_module, "EXECUTION_BEAT_S", 0.2)
    monkeypatch.setattr(worker_module, "EXECUTION_TTL_S", 2)  # ten beats a TTL: a loaded machine may miss some
    get_queue(DEFAULT).enqueue("time.sleep", 6, job_id="sleeper")  # runs for 3 TTLs
    seen = []

    def probe():
        conn = redis.Redis.from_url(settings.current().redis_url)
        job = RQJob.fetch("sleeper", connection=conn)
        deadline = time.monotonic() + 10
        while job.get_status() != "started" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3.5)  # well past the TTL the execution was created with, well before the job ends
        seen.append((job.get_status(), still_running(job)))

    thread = threading.Thread(target=probe)
    thread.start()
    run_worker_burst(app)
    thread.join()
    assert seen == [("started", True)]
    assert RQJob.fetch("sleeper", connection=connection()).get_status() == "finished"

    # a worker that dies after taking a job stops beating: its execution lapses within the TTL
    rq_job = get_queue(DEFAULT).enqueue("time.sleep", 0, job_id="orphan")
    dying = worker_module.AppWorker([get_queue(DEFAULT)], connection=connection())
    dying.prepare_job_execution(rq_job)
    dying.prepare_execution(rq_job)
    assert is_live(rq_job.id)
    dying._stop_beat()  # what SIGKILL does to the beating thread
    time.sleep(2.5)
    assert rq_job.get_status() == "started" and not is_live(rq_job.id)


class Killed(BaseException):
    """A SIGKILL, as far as the run is concerned: nothing of it runs after (no rollback, no release)."""


def kill_at_second_mark(monkeypatch, *, after_commit: bool) -> list[int]:
    """Kill the run at its second chunk's ``sending`` mark, the commit the first chunk's results
    share: before it (``after_commit=False``) or just after it. Returns the ids of the marks seen."""
    real, marks = claims.mark_sending, []

    def mark(claim, ids, lease_s):
        marks.append(ids)
        if len(marks) == 2 and not after_commit:
            raise Killed()
        ok = real(claim, ids, lease_s)
        if len(marks) == 2:
            raise Killed()
        return ok

    monkeypatch.setattr(claims, "mark_sending", mark)
    return marks


def statuses(job_id: int) -> Counter:
    db.session.rollback()
    return Counter(db.session.execute(select(Recipient.status).where(Recipient.job_id == job_id)).scalars())


def rerun_after_lease(batch_id: int) -> str:
    db.session.execute(update(Batch).where(Batch.id == batch_id).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    return send_batch(batch_id)


def test_a_kill_before_the_commit_a_chunks_results_share_leaves_it_uncertain(app, client, make_company, ses,
                                                                             monkeypatch):
    """Killed after the first chunk's call, before the commit that records its results with the next
    chunk's mark: the first chunk is still ``sending`` (not lost, not taken for unsent), the second
    was never handed over. The next holder finds only the first uncertain."""
    company = make_company(**aws_settings(ses.url), uncertain_policy="fail")
    job_id = make_job(client, company, n=120)  # one batch, chunks of 50, 50, 20
    connection().flushdb()
    plan_job(job_id)
    batch_id = db.session.execute(select(Batch.id)).scalar_one()
    marks = kill_at_second_mark(monkeypatch, after_commit=False)
    try:
        send_batch(batch_id)
    except Killed:
        pass
    assert len(marks) == 2 and len(marks[0]) == 50
    assert statuses(job_id) == {"sending": 50, "pending": 70}
    assert len(ses.store()) == 50
    monkeypatch.undo()
    assert rerun_after_lease(batch_id) == "done"
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    assert job.emails_uncertain == 50 and job.emails_sent == 70 and job.emails_failed == 50
    got = Counter(a for m in ses.store() for a in m["destination"]["to"])
    assert len(got) == 120 and max(got.values()) == 1  # the policy fails them: none sent twice


def test_a_kill_after_the_shared_commit_leaves_only_the_next_chunk_uncertain(app, client, make_company, ses,
                                                                            monkeypatch):
    company = make_company(**aws_settings(ses.url))  # uncertain ones are resent
    job_id = make_job(client, company, n=120)
    connection().flushdb()
    plan_job(job_id)
    batch_id = db.session.execute(select(Batch.id)).scalar_one()
    kill_at_second_mark(monkeypatch, after_commit=True)
    try:
        send_batch(batch_id)
    except Killed:
        pass
    assert statuses(job_id) == {"sent": 50, "sending": 50, "pending": 20}  # the first chunk recorded
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    assert job.emails_sent == 50
    assert len(ses.store()) == 50  # the second chunk never went out
    monkeypatch.undo()
    assert rerun_after_lease(batch_id) == "done"
    db.session.refresh(job)
    assert job.status == "completed" and job.emails_uncertain == 50 and job.emails_sent == 120
    got = Counter(a for m in ses.store() for a in m["destination"]["to"])
    assert len(got) == 120 and max(got.values()) == 1  # (the uncertain chunk had not gone out)


def test_a_refused_mark_still_records_the_chunk_before_it(app, client, make_company, ses, monkeypatch):
    """The job is cancelled while a chunk is out: the next mark is refused and rolled back, and the
    results it was to share the commit with are committed on their own."""
    company = make_company(**aws_settings(ses.url))
    job_id = make_job(client, company, n=120)
    connection().flushdb()
    plan_job(job_id)
    batch_id = db.session.execute(select(Batch.id)).scalar_one()
    real, seen = claims.mark_sending, []

    def mark(claim, ids, lease_s):
        seen.append(ids)
        ok = real(claim, ids, lease_s)
        if len(seen) == 1:  # cancelled once the first chunk is marked, before its call
            db.session.execute(update(Job).where(Job.id == job_id).values(cancel_requested_at=utcnow()))
            db.session.commit()
        return ok

    monkeypatch.setattr(claims, "mark_sending", mark)
    assert send_batch(batch_id) == "cancelled"
    assert statuses(job_id) == {"sent": 50, "cancelled": 70}  # the chunk that went out is recorded sent
    assert len(ses.store()) == 50
