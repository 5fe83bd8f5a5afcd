"""The task queue port (``core.taskqueue``) with RQ, on core's Redis connection.

A task is queued as its registered function (``tasks.registry``), so RQ
records the function's import path (``tasks.sending.plan_job``) and every
worker imports it from there. A ``Policy`` becomes RQ's retry, TTL and
timeout options.

``status`` is RQ's view of an id made honest about dead workers: RQ keeps a
job ``started`` after its worker was SIGKILLed, and ``queued`` after a worker
died between popping and starting it, until its maintenance (every ten
minutes) notices; here such a job is not live, so the sweep plans the work
again at once.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis
from rq import Queue, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

from core.queue import DEFAULT, connection
from core.taskqueue import ARGS, Policy, Status, Task


def get_queue(name: str = DEFAULT, url: str | None = None) -> Queue:
    return Queue(name, connection=connection(url))


def _options(task_id: str | None, policy: Policy) -> dict[str, Any]:
    options: dict[str, Any] = {"job_id": task_id, "result_ttl": policy.result_ttl, "failure_ttl": policy.failure_ttl}
    if policy.retries:
        options["retry"] = Retry(max=len(policy.retries), interval=list(policy.retries))
    if policy.timeout is not None:
        options["job_timeout"] = policy.timeout
    return options


class RqTaskQueue:
    """``core.taskqueue.TaskQueue`` with RQ."""

    def __init__(self, functions: Mapping[Task, Callable]):
        self.functions = dict(functions)

    def _function(self, task: Task, args: tuple) -> Callable:
        if len(args) != len(ARGS[task]):
            raise TypeError(f"{task} takes {ARGS[task]}, not {len(args)} arguments")
        return self.functions[task]

    def enqueue(self, queue: str, task: Task, *args, task_id: str | None = None, policy: Policy) -> None:
        get_queue(queue).enqueue(self._function(task, args), *args, **_options(task_id, policy))

    def enqueue_at(self, when: datetime, queue: str, task: Task, *args, task_id: str | None = None,
                   policy: Policy) -> None:
        if when.tzinfo is None:  # RQ would read a naive time as the server's local time
            raise ValueError("enqueue_at needs an aware datetime")
        get_queue(queue).enqueue_at(when, self._function(task, args), *args, **_options(task_id, policy))

    def enqueue_in(self, delay: float, queue: str, task: Task, *args, task_id: str | None = None,
                   policy: Policy) -> None:
        get_queue(queue).enqueue_in(timedelta(seconds=delay), self._function(task, args), *args,
                                    **_options(task_id, policy))

    def enqueue_many(self, queue: str, task: Task, count: int, policy: Policy) -> None:
        fn, options = self._function(task, ()), _options(None, policy)
        options["timeout"] = options.pop("job_timeout", None)  # prepare_data's name for it
        get_queue(queue).enqueue_many([Queue.prepare_data(fn, **options) for _ in range(count)])

    def status(self, task_id: str) -> Status | None:
        status = live_status(task_id)
        return None if status is None else Status(status.value)

    def live(self, task_ids: Sequence[str]) -> set[str]:
        return live_ids(task_ids)

    def queued(self, queues: Sequence[str]) -> list[int]:
        pipe = connection().pipeline(transaction=False)
        for name in queues:
            pipe.llen(f"{Queue.redis_queue_namespace_prefix}{name}")
        return [int(n) for n in pipe.execute()]

    def scheduled(self, queue: str) -> int:
        return get_queue(queue).scheduled_job_registry.count

    def worker_count(self) -> int:
        return int(connection().scard(Worker.redis_workers_keys))


LIVE = (RQStatus.QUEUED, RQStatus.SCHEDULED, RQStatus.STARTED, RQStatus.DEFERRED)


def live_status(rq_id: str) -> RQStatus | None:
    """RQ's status of ``rq_id`` while a worker will still run it (or runs it now), else ``None``."""
    try:
        job = RQJob.fetch(rq_id, connection=connection())
    except NoSuchJobError:
        return None
    status = job.get_status(refresh=False)
    conn, queue = job.connection, Queue(job.origin, connection=job.connection)
    if status == RQStatus.STARTED:
        live = still_running(job)
    elif status == RQStatus.QUEUED:  # a worker killed mid-dequeue leaves the status while no worker will run it
        live = conn.lpos(queue.key, job.id) is not None or (
            conn.lpos(queue.intermediate_queue_key, job.id) is not None and not _stuck_after_pop(conn, job.id))
    elif status == RQStatus.SCHEDULED:
        live = conn.zscore(queue.scheduled_job_registry.key, job.id) is not None
    else:
        live = status in LIVE
    return status if live else None


def live_ids(rq_ids: Sequence[str]) -> set[str]:
    """The ids of ``rq_ids`` whose ``live_status`` is not ``None``: each job's status and queue read in one
    round trip and each queue's list read once (an ``LPOS`` per id scans the list: the sweep's check of
    a backlog of n queued plans was n² work, 44 s for 2,500); the rarer states are checked one by one."""
    conn = connection()
    ids = list(rq_ids)
    pipe = conn.pipeline(transaction=False)
    for rq_id in ids:  # the two fields it needs, not the whole job (HGETALL and its parse: 9 s for 7,400)
        pipe.hmget(RQJob.key_for(rq_id), "status", "origin")
    lists: dict[str, set[str]] = {}
    found = set()
    for rq_id, (status, origin) in zip(ids, pipe.execute(), strict=True):
        if status is None:
            continue  # no such job
        if _text(status) == RQStatus.QUEUED and origin is not None:
            origin = _text(origin)
            if origin not in lists:
                key = Queue(origin, connection=conn).key
                lists[origin] = {_text(m) for m in conn.lrange(key, 0, -1)}
            if rq_id in lists[origin]:
                found.add(rq_id)
                continue
        if live_status(rq_id) is not None:
            found.add(rq_id)
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: a popped job a worker has not started after this long was popped by a worker that died
POPPED_GRACE_S = 10


def _stuck_after_pop(conn: redis.Redis, rq_id: str) -> bool:
    """True when ``rq_id`` has sat in its queue's intermediate list (popped, not started) for longer
    than ``POPPED_GRACE_S``: a live worker starts a popped job within milliseconds. RQ's own check
    of that list runs with its maintenance, every ten minutes."""
    key = f"offload:popped:{rq_id}"
    if conn.set(key, time.time(), nx=True, ex=POPPED_GRACE_S * 30):
        return False
    if time.time() - float(conn.get(key) or time.time()) <= POPPED_GRACE_S:
        return False
    conn.delete(key)  # the next pop of this id is timed afresh
    return True


def still_running(job: RQJob) -> bool:
    """True while a worker runs ``job``: one of its executions is in the started registry and not expired.

    A SIGKILLed worker leaves its job ``started`` until RQ's maintenance (every ten minutes)
    notices; the execution's entry expires when the worker stops beating it (``tasks.worker``
    beats every 5 s with a 30 s TTL), and then the job is dead, not running.
    """
    started = job.started_job_registry.key
    now_ts = time.time()
    # the ids, not rq's get_executions(): that reads each execution's hash, which expires 60 s before
    # its entry in the job's execution registry does (and raises for the missing hash meanwhile)
    for execution_id in job.execution_registry.get_execution_ids():
        score = job.connection.zscore(started, f"{job.id}:{execution_id}")
        if score is not None and score > now_ts:
            return True
    return False
