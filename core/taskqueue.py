"""The task queue port: what core asks of a queue, and nothing of how it is done.

Core names the work it wants run (``Task``), passes ids only (a queue keeps
failed work's arguments: never addresses, passwords or license codes), says
how the work is kept (``Policy``: its retries, how long its result and its
failure are kept, how long it may run), gives it a predictable id when the
sweep must tell whether the queue still holds what the database says waits,
and asks whether an id is still live (``Status``). ``core.queue`` is the one
caller.

``tasks`` implements the port with RQ (``tasks.rq_queue``) and registers the
function of every task (``tasks.registry``); the composition root installs it
(``install``), which refuses a registry that misses a task or whose function
cannot take core's arguments, so a process fails at start-up, naming the
task, instead of at the first enqueue.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Task(StrEnum):
    """The work core may queue."""

    PLAN_JOB = "plan_job"
    FINISH_JOB = "finish_job"
    WORK_READY = "work_ready"  # a wake-up: work the ready set (core.scheduler)
    SUBMIT_BATCHES = "submit_batches"
    SEND_FALLBACK = "send_fallback"
    ISSUE_CERTIFICATES = "issue_certificates"
    CLOSE_WINDOW = "close_window"  # an LMS event window
    CLOSE_SMTP_WINDOW = "close_smtp_window"  # a company's window of SMTP submissions
    CLOSE_WINDOWS = "close_windows"  # every due window, events and SMTP, of every company
    RUN_CONNECTION_TEST = "run_connection_test"
    SEND_TEST_EMAIL = "send_test_email"
    SWEEP = "sweep"
    MARK_LMS_ROWS = "mark_lms_rows"
    POLL_LMS_COMPANY = "poll_lms_company"
    POLL_LMS = "poll_lms"


#: the arguments core passes each task, by position: ids and names only
ARGS: dict[Task, tuple[str, ...]] = {
    Task.PLAN_JOB: ("job_id",),
    Task.FINISH_JOB: ("job_id",),
    Task.WORK_READY: (),
    Task.SUBMIT_BATCHES: ("batch_ids",),
    Task.SEND_FALLBACK: ("batch_id",),
    Task.ISSUE_CERTIFICATES: ("job_id",),
    Task.CLOSE_WINDOW: ("company_id", "job_type"),
    Task.CLOSE_SMTP_WINDOW: ("company_id", "job_type"),
    Task.CLOSE_WINDOWS: (),
    Task.RUN_CONNECTION_TEST: ("company_id", "check_id"),
    Task.SEND_TEST_EMAIL: ("company_id", "check_id"),
    Task.SWEEP: (),
    Task.MARK_LMS_ROWS: ("company_id",),
    Task.POLL_LMS_COMPANY: ("company_id",),
    Task.POLL_LMS: (),
}


class Status(StrEnum):
    """Where queued work stands while a worker will still run it."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    STARTED = "started"


#: live but not started
WAITING = frozenset({Status.QUEUED, Status.SCHEDULED, Status.DEFERRED})


@dataclass(frozen=True)
class Policy:
    """How queued work is kept: the delay (seconds) before each retry after an unexpected
    exception (none: no retry), how long its result and its failure are kept, and how long
    it may run (``None``: the queue's default)."""

    retries: tuple[int, ...]
    result_ttl: int
    failure_ttl: int
    timeout: int | None = None


class TaskQueue(Protocol):
    """The queue core puts work on. A Redis outage raises redis-py's ``RedisError`` (or ``OSError``)."""

    #: the function of every task, as registered by ``tasks``
    functions: Mapping[Task, Callable]

    def enqueue(self, queue: str, task: Task, *args, task_id: str | None = None, policy: Policy) -> None:
        """Run ``task(*args)`` as soon as a worker of ``queue`` is free."""

    def enqueue_at(self, when: datetime, queue: str, task: Task, *args, task_id: str | None = None,
                   policy: Policy) -> None:
        """Run it at ``when`` (an aware datetime)."""

    def enqueue_in(self, delay: float, queue: str, task: Task, *args, task_id: str | None = None,
                   policy: Policy) -> None:
        """Run it in ``delay`` seconds."""

    def enqueue_many(self, queue: str, task: Task, count: int, policy: Policy) -> None:
        """Queue ``count`` runs of an argument-less ``task`` in one round trip, without ids."""

    def status(self, task_id: str) -> Status | None:
        """Where ``task_id`` stands while a worker will still run it (or runs it now), else ``None``."""

    def live(self, task_ids: Sequence[str]) -> set[str]:
        """The ids of ``task_ids`` whose ``status`` is not ``None``, in a few round trips."""

    def queued(self, queues: Sequence[str]) -> list[int]:
        """How many tasks wait to run now in each of ``queues`` (one round trip)."""

    def scheduled(self, queue: str) -> int:
        """How many tasks of ``queue`` wait for their time."""

    def worker_count(self) -> int:
        """How many workers are registered."""


class TaskRegistryError(RuntimeError):
    """A task core may queue has no function, or one that cannot take core's arguments."""


def check(functions: Mapping[Task, Callable]) -> None:
    """Raise ``TaskRegistryError`` naming each task that ``functions`` misses or cannot run."""
    problems = []
    for task in Task:
        fn = functions.get(task)
        if fn is None:
            problems.append(f"{task}: no function registered")
            continue
        try:
            inspect.signature(fn).bind(*ARGS[task])
        except TypeError as exc:
            problems.append(f"{task}: {fn.__module__}.{fn.__qualname__} cannot take {ARGS[task]} ({exc})")
    if problems:
        raise TaskRegistryError("task registry: " + "; ".join(problems))


_port: TaskQueue | None = None


def install(port: TaskQueue) -> None:
    """Make ``port`` the task queue of this process, once its registry passed ``check``."""
    global _port
    check(port.functions)
    _port = port


def current() -> TaskQueue:
    """The installed task queue."""
    if _port is None:
        raise RuntimeError("no task queue installed: the composition root installs one (service)")
    return _port
