"""tasks implements core's task queue port with RQ: every task core may queue resolves to a function of
tasks that takes core's arguments, found by the import path RQ records; start-up refuses a registry that
misses one; the RQ adapter turns each policy into RQ's options and RQ's states into core's."""
from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest
from rq.utils import import_attribute

from core import queue
from core.queue import DEFAULT, HIGH, JOB, SEND, WAKE
from core.taskqueue import ARGS, Status, Task, TaskRegistryError, check
from service import create_app
from tasks.registry import TASKS
from tasks.rq_queue import RqTaskQueue, get_queue


def test_every_task_resolves_to_a_function_of_tasks_taking_cores_arguments():
    assert set(TASKS) == set(Task)
    for task, fn in TASKS.items():
        path = f"{fn.__module__}.{fn.__qualname__}"
        assert fn.__module__.startswith("tasks."), path
        assert import_attribute(path) is fn, path  # what a worker imports to run it
        inspect.signature(fn).bind(*ARGS[task])
    check(TASKS)


def test_start_up_fails_naming_a_task_without_a_function(monkeypatch, tmp_path):
    monkeypatch.delitem(TASKS, Task.POLL_LMS)
    with pytest.raises(TaskRegistryError, match="poll_lms: no function registered"):
        create_app({"database_url": f"sqlite:///{tmp_path}/x.db"})


def test_policies_become_rqs_options(app):
    port = RqTaskQueue(TASKS)
    port.enqueue(DEFAULT, Task.PLAN_JOB, 7, task_id="plan-7", policy=JOB)
    job = get_queue(DEFAULT).fetch_job("plan-7")
    assert (job.func_name, job.args) == ("tasks.sending.plan_job", (7,))
    assert (job.retries_left, job.retry_intervals, job.result_ttl, job.failure_ttl) == (3, [10, 30, 60], 300,
                                                                                       7 * 24 * 3600)
    port.enqueue_many(SEND, Task.WORK_READY, 2, WAKE)
    wakes = get_queue(SEND).get_jobs()
    assert [(j.func_name, j.timeout, j.result_ttl, j.retries_left) for j in wakes] == \
        [("tasks.scheduling.work_ready", 900, 0, None)] * 2
    assert port.queued([DEFAULT, SEND, HIGH]) == [1, 2, 0]


def test_status_is_cores_and_none_when_no_worker_will_run_it(app):
    port = RqTaskQueue(TASKS)
    port.enqueue_at(datetime.now(UTC) + timedelta(hours=1), DEFAULT, Task.PLAN_JOB, 8, task_id="plan-8",
                    policy=JOB)
    port.enqueue_in(3600, HIGH, Task.SWEEP, task_id="sweep-x", policy=queue.periodic(15))
    assert (port.status("plan-8"), port.status("sweep-x"), port.status("nothing")) == \
        (Status.SCHEDULED, Status.SCHEDULED, None)
    assert port.scheduled(DEFAULT) == 1 and queue.is_live("plan-8") and queue._waiting("plan-8")
    port.enqueue(DEFAULT, Task.FINISH_JOB, 8, task_id="finish-8", policy=queue.FINISH)
    assert port.status("finish-8") == Status.QUEUED


def test_the_adapter_refuses_what_rq_would_misread(app):
    port = RqTaskQueue(TASKS)
    with pytest.raises(ValueError, match="aware"):
        port.enqueue_at(datetime.now() + timedelta(hours=1), DEFAULT, Task.PLAN_JOB, 9, policy=JOB)  # noqa: DTZ005
    with pytest.raises(TypeError, match="plan_job takes"):
        port.enqueue(DEFAULT, Task.PLAN_JOB, policy=JOB)
    assert get_queue(DEFAULT).count == 0
