"""The composition root: the web app carries every CLI command; the worker runs its jobs in an app of its
own, with the settings and core's handles and none of the web side."""
from __future__ import annotations

from sqlalchemy import select

from core import settings
from core.db import db
from core.models import Job
from service import create_worker_app
from tests.support.servers import SmtpSink

CLI = {"worker", "smtp", "db", "company", "user", "keys", "lms", "run-demo"}


def test_the_web_app_registers_every_command_of_the_cli(app):
    assert CLI <= set(app.cli.commands)


def test_the_worker_app_has_core_but_no_web_side(app):
    worker = create_worker_app(settings.current())
    assert worker.blueprints == {} and not hasattr(worker, "login_manager") and "csrf" not in worker.extensions
    assert worker.cli.commands == {}
    with worker.app_context():
        assert db.engine is worker.extensions["core.db"] is not app.extensions["core.db"]
        assert db.engine.url == app.extensions["core.db"].url


def test_the_worker_command_runs_jobs_in_the_worker_app(app, client, make_company, runner):
    with SmtpSink() as sink:
        company = make_company("Worker Co", provider="smtp", sender="noreply@worker.test", smtp_host="127.0.0.1",
                               smtp_port=sink.port, smtp_tls="none")
        resp = client.post("/api/v1/jobs", headers=company.auth, json={
            "type": "notification", "subject": "Hi {{ name }}", "body_text": "Hello {{ name }}",
            "recipients": [{"email": f"w{i}@worker.test", "data": {"name": f"W{i}"}} for i in range(3)]})
        assert resp.status_code == 202, resp.json
        done = runner.invoke(args=["worker", "--burst"])
        assert done.exit_code == 0, done.output
        db.session.expire_all()
        job = db.session.execute(select(Job).where(Job.id == resp.json["id"])).scalar_one()
        assert (job.status, job.emails_sent) == ("completed", 3)
        assert sorted(sink.recipients()) == [f"w{i}@worker.test" for i in range(3)]
