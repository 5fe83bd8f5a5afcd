"""core.db: plain SQLAlchemy, a session per thread, or per installed scope (the web app's app contexts)."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from core.db import NAMING, Database, Model, db
from core.models import Company


def in_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_without_flask_each_thread_has_its_session(tmp_path):
    handle = Database()
    with pytest.raises(RuntimeError, match="configure"):
        handle.engine  # noqa: B018
    handle.configure(f"sqlite:///{tmp_path}/t.db")
    mine = handle.session()
    assert handle.session() is mine and mine.bind is handle.engine
    assert in_thread(handle.session) is not mine
    assert handle.session.execute(text("SELECT 1")).scalar() == 1
    handle.remove()
    assert handle.session() is not mine


def test_an_installed_scope_keys_the_sessions_and_none_falls_back_to_the_thread(tmp_path):
    handle = Database()
    default = handle.configure(f"sqlite:///{tmp_path}/a.db")
    other = Database().configure(f"sqlite:///{tmp_path}/b.db")
    scope = {"key": None, "engine": None}
    handle.install_scope(lambda: scope["key"], engine=lambda: scope["engine"])
    thread_session = handle.session()
    assert thread_session.bind is default
    scope.update(key="one", engine=other)
    one = handle.session()
    assert one is not thread_session and one.bind is other and handle.engine is other
    assert in_thread(handle.session) is one  # the scope, not the thread, decides
    scope["key"] = "two"
    assert handle.session() is not one
    handle.remove()  # ends scope "two" only
    scope["key"] = "one"
    assert handle.session() is one
    scope.update(key=None, engine=None)
    assert handle.session() is thread_session and handle.engine is default


def test_the_web_app_gives_each_app_context_its_session_and_ends_it(app):
    outer = db.session()
    assert outer.bind is app.extensions["core.db"]
    with app.app_context():
        inner = db.session()
        assert inner is not outer
        inner.execute(text("SELECT 1"))
        assert inner.in_transaction()
    assert not inner.in_transaction()  # removed at teardown: its transaction ended
    assert db.session() is outer


def test_core_runs_outside_any_app_context(app, make_company):
    """What a process without Flask (SMTP submission) does: the configured engine, a thread's session."""
    company_id = make_company("Thread Co").id

    def work():
        try:
            return db.session.execute(select(Company.name).where(Company.id == company_id)).scalar_one()
        finally:
            db.remove()

    assert in_thread(work) == "Thread Co"


def test_constraint_names_follow_the_convention():
    assert Model.metadata is db.metadata and dict(db.metadata.naming_convention) == NAMING
    (fk,) = db.metadata.tables["jobs"].c.company_id.foreign_keys
    assert fk.constraint.name == "fk_jobs_company_id_companies"
