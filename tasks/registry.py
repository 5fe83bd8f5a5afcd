"""The function of every task core may queue (``core.taskqueue.Task``).

The composition root installs ``tasks.rq_queue.RqTaskQueue(TASKS)``; the
install checks that every task has a function here that takes core's
arguments (``core.taskqueue.check``), so a missing one stops the process at
start-up, named.
"""
from __future__ import annotations

from collections.abc import Callable

from core.taskqueue import Task
from tasks import certificates, checks, events, lms, offload, scheduling, sending, submissions, sweep, windows

TASKS: dict[Task, Callable] = {
    Task.PLAN_JOB: sending.plan_job,
    Task.FINISH_JOB: sending.finish_job,
    Task.WORK_READY: scheduling.work_ready,
    Task.SUBMIT_BATCHES: offload.submit_batches,
    Task.SEND_FALLBACK: offload.send_fallback,
    Task.ISSUE_CERTIFICATES: certificates.issue_certificates,
    Task.CLOSE_WINDOW: events.close_window,
    Task.CLOSE_SMTP_WINDOW: submissions.close_window,
    Task.CLOSE_WINDOWS: windows.close_windows,
    Task.RUN_CONNECTION_TEST: checks.run_connection_test,
    Task.SEND_TEST_EMAIL: checks.send_test_email,
    Task.SWEEP: sweep.sweep,
    Task.MARK_LMS_ROWS: lms.mark_rows,
    Task.POLL_LMS_COMPANY: lms.poll_company,
    Task.POLL_LMS: lms.poll_all,
}
