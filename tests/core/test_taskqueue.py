"""core.taskqueue: the port core queues work through; a registry that cannot run a task is refused, named."""
from __future__ import annotations

import inspect

import pytest

from core import taskqueue
from core.taskqueue import ARGS, Task, TaskRegistryError, check


def takes(*names):
    """A function whose signature is exactly ``names``."""
    def fn(*args):
        return args

    fn.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                          for n in names])
    return fn


def complete() -> dict:
    return {task: takes(*ARGS[task]) for task in Task}


class FakePort:
    def __init__(self, functions):
        self.functions = functions


def test_every_task_declares_its_arguments():
    assert set(ARGS) == set(Task)


def test_a_complete_registry_passes():
    check(complete())


def test_a_missing_task_is_named():
    functions = complete()
    del functions[Task.SWEEP]
    with pytest.raises(TaskRegistryError, match=r"sweep: no function registered"):
        check(functions)


def test_a_function_that_cannot_take_cores_arguments_is_named():
    functions = {**complete(), Task.CLOSE_WINDOW: takes("company_id")}
    expected = r"close_window: .* cannot take \('company_id', 'job_type'\)"
    with pytest.raises(TaskRegistryError, match=expected):
        check(functions)


def test_install_refuses_and_keeps_the_installed_port(monkeypatch):
    good = FakePort(complete())
    monkeypatch.setattr(taskqueue, "_port", good)
    with pytest.raises(TaskRegistryError, match="plan_job"):
        taskqueue.install(FakePort({**complete(), Task.PLAN_JOB: takes()}))
    assert taskqueue.current() is good


def test_without_a_port_core_says_so(monkeypatch):
    monkeypatch.setattr(taskqueue, "_port", None)
    with pytest.raises(RuntimeError, match="no task queue installed"):
        taskqueue.current()
