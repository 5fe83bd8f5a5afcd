"""The scheduler through the real stack: PostgreSQL, Redis, aws-ses-v2-local
and two ``flask worker`` processes. A company's transactional mail, posted
while its own rate-limited campaign is sending, takes the company's tokens
ahead of the campaign; another company's password job is not held up at all;
nothing is lost or sent twice.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import select

from core import companies
from core.db import db
from core.models import Job, Recipient
from service import create_app
from tests.support.jobs import BODY, aws_settings, people
from tests.support.servers import RedisServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLASK = os.path.join(ROOT, ".venv", "bin", "flask")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
pytestmark = pytest.mark.slow


@pytest.fixture
def stack(ses_local):
    """A fresh PostgreSQL database, a private Redis, an app on them, and a way to start workers."""
    psycopg = pytest.importorskip("psycopg")
    name = f"offload_sched_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    procs: list[subprocess.Popen] = []
    with RedisServer() as redis_server:
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_server.url, "OFFLOAD_BATCH_SIZE": "50",
               "OFFLOAD_SWEEP_S": "5", "SECRET_KEY": "test"}
        subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
        app = create_app({"database_url": url, "redis_url": redis_server.url, "batch_size": 50})
        app.testing = True

        def workers(n: int = 2) -> None:
            for i in range(n):
                procs.append(subprocess.Popen([FLASK, "--app", "wsgi", "worker", "--name", f"sched-{name}-{i}"],
                                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))

        try:
            with app.app_context():
                yield app, workers
                db.session.remove()
                db.engine.dispose()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.rollback()  # a fresh snapshot
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_transactional_mail_takes_its_companys_rate_ahead_of_its_running_campaign(stack, make_stack_company):
    app, workers = stack
    client = app.test_client()
    ses = make_stack_company.ses
    ses.clear()
    limited = make_stack_company(max_send_rate=20)  # 300 recipients: 15 s at least
    other = make_stack_company()
    campaign = client.post("/api/v1/jobs", headers=limited.auth, json={
        **BODY, "type": "reengagement", "recipients": people(300, "camp")}).json["id"]
    workers(2)
    wait_for(lambda: db.session.get(Job, campaign).emails_sent >= 40)  # the campaign is sending
    own = client.post("/api/v1/jobs", headers=limited.auth, json={**BODY, "recipients": people(5, "own")}).json["id"]
    theirs = client.post("/api/v1/jobs", headers=other.auth, json={**BODY, "recipients": people(5, "their")}).json["id"]
    wait_for(lambda: db.session.get(Job, own).status == "completed" and db.session.get(Job, theirs).status ==
             "completed", timeout=60)
    picked_at = db.session.get(Job, own).started_at  # a worker took its batch from the ready set
    own_done = max(db.session.execute(select(Recipient.sent_at).where(Recipient.job_id == own)).scalars())
    camp_sent_between = db.session.execute(select(Recipient.id).where(
        Recipient.job_id == campaign, Recipient.sent_at > picked_at, Recipient.sent_at <= own_done)).all()
    camp = db.session.get(Job, campaign)
    assert camp.status == "processing" and camp.emails_sent < 300  # the campaign was still going
    # from then on the campaign yields the tokens: what it sent meanwhile is at most the chunk
    # each worker had already taken tokens for
    assert len(camp_sent_between) <= 2 * 20
    wait_for(lambda: db.session.get(Job, campaign).status == "completed", timeout=120)
    got = Counter(m["destination"]["to"][0] for m in ses.store())
    assert len(got) == 310 and max(got.values()) == 1  # nothing lost, nothing twice
    assert db.session.get(Job, campaign).priority == "bulk" and db.session.get(Job, own).priority == "transactional"


@pytest.fixture
def make_stack_company(stack, ses_local):
    def make(**settings):
        company, token, _secret = companies.create_company(f"Company {uuid.uuid4().hex[:6]}")
        companies.configure(company, {k: str(v) for k, v in {**aws_settings(ses_local.url), **settings}.items()})
        db.session.commit()
        return type("C", (), {"id": company.id, "auth": {"Authorization": f"Bearer {token}"}})

    make.ses = ses_local
    return make
