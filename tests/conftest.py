"""Fixtures shared by the whole suite.

The database is real: SQLite by default, PostgreSQL when
``OFFLOAD_TEST_DB=postgresql`` (a fresh database on the machine's server at
127.0.0.1:5432, created and dropped by the run). Redis is a private
``redis-server`` the run starts. Migrations are applied once per run; each
test starts from empty tables and an empty Redis.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid

import pytest
from sqlalchemy import text

from tests.support.servers import MotoServer, RedisServer, SesLocal, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_ADMIN_URL = os.environ.get("OFFLOAD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_create(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url():
    """A fresh, migrated database for the run."""
    if os.environ.get("OFFLOAD_TEST_DB") == "postgresql":
        name = f"offload_test_{uuid.uuid4().hex[:8]}"
        url = _pg_create(name)
        yield url
        _pg_drop(name)
    else:
        folder = tempfile.mkdtemp(prefix="offload-test-")
        yield f"sqlite:///{folder}/test.db"
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    if shutil.which("redis-server"):
        with RedisServer() as server:
            yield server.url
    else:  # no redis-server binary: the embedded Redis-compatible server
        from core.queue import start_embedded_redis

        yield start_embedded_redis(port=free_port())


@pytest.fixture(scope="session")
def migrated(database_url, redis_server):
    """Apply the Alembic migrations once (proves they run on this database)."""
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_server}
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", "db", "upgrade"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return database_url


TEST_CONFIG = {
    "TESTING": True,
    "OFFLOAD_LEASE_S": 30,
    "OFFLOAD_SWEEP_S": 2,
}


@pytest.fixture
def app(migrated, redis_server):
    """An app on the run's database and Redis, emptied before the test."""
    from dashboard import create_app
    from core.db import db
    from core.queue import connection

    app = create_app({"SQLALCHEMY_DATABASE_URI": migrated, "REDIS_URL": redis_server, **TEST_CONFIG})

    @app.before_request
    def fresh_g():
        # test requests share the test's app context; give each request a clean
        # ``g`` as production does (Flask-Login and Flask-WTF cache in g)
        from flask import g

        g.__dict__.clear()

    with app.app_context():
        _empty_tables(db)
        connection().flushdb()
        yield app
        db.session.remove()
        db.engine.dispose()


def _empty_tables(db) -> None:
    tables = [t.name for t in reversed(db.metadata.sorted_tables)]
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    else:
        for name in tables:
            db.session.execute(text(f"DELETE FROM {name}"))
    db.session.commit()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class CompanyFixture:
    """A company with its plaintext API token and callback secret."""

    def __init__(self, company, token: str, secret: str):
        self.company, self.id, self.token, self.secret = company, company.id, token, secret

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_company(app):
    from core import companies
    from core.db import db

    def make(name: str | None = None, **settings) -> CompanyFixture:
        company, token, secret = companies.create_company(name or f"Company {uuid.uuid4().hex[:6]}")
        if settings:
            companies.configure(company, {k: str(v) for k, v in settings.items()})
        db.session.commit()
        return CompanyFixture(company, token, secret)

    return make


@pytest.fixture
def company(make_company):
    return make_company("Acme Learning", sender="noreply@acme.test", provider="smtp")


@pytest.fixture
def make_user(app):
    from core import companies
    from core.db import db

    def make(email: str, role: str = "manager", company_id: int | None = None,
             password: str = "correct horse battery") -> tuple:
        user = companies.create_user(email, password, role, company_id)
        db.session.commit()
        return user, password

    return make


def csrf_from(html: str) -> str:
    """The CSRF token of the first form in ``html``."""
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or \
        re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert match, "no csrf_token in the page"
    return match.group(1)


class AuthActions:
    def __init__(self, client):
        self.client = client

    def login(self, email: str, password: str):
        page = self.client.get("/login")
        token = csrf_from(page.get_data(as_text=True))
        return self.client.post("/login", data={"email": email, "password": password, "csrf_token": token})

    def logout(self):
        page = self.client.get("/admin/")
        return self.client.post("/logout", data={"csrf_token": csrf_from(page.get_data(as_text=True))})


@pytest.fixture
def auth(client):
    return AuthActions(client)


def run_worker_burst(app, max_jobs: int | None = None) -> None:
    """Process every queued RQ job in this process (burst mode, scheduler on)."""
    from core.queue import QUEUE_NAMES, connection, get_queue
    from tasks.worker import AppWorker

    AppWorker.app = app
    worker = AppWorker([get_queue(n) for n in QUEUE_NAMES], connection=connection())
    worker.work(burst=True, max_jobs=max_jobs, with_scheduler=False, logging_level="WARNING")


@pytest.fixture(scope="session")
def ses_local():
    """aws-ses-v2-local, the SES v2 emulator (npm), for the run."""
    with SesLocal() as server:
        yield server


@pytest.fixture(scope="session")
def moto_server():
    """moto in server mode (SQS, S3, STS) for the run."""
    with MotoServer() as server:
        yield server
