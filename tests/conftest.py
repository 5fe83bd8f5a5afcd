"""Fixtures shared by the whole suite.

The database is real: SQLite by default, PostgreSQL when
``OFFLOAD_TEST_DB=postgresql`` (a fresh database on the machine's server at
127.0.0.1:5432, created and dropped by the run). Redis is a private
``redis-server`` the run starts. Migrations are applied once per run; each
test starts from empty tables and an empty Redis.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from core import companies, settings
from core.db import db
from core.queue import connection, start_embedded_redis
from providers import guard
from service import create_app
from tests.support.app import (
    JINJA_BYTECODE,
    ROOT,
    TEST_SETTINGS,
    AuthActions,
    CompanyFixture,
    empty_tables,
    pg_create,
    pg_drop,
)
from tests.support.certificates import client as s3_client
from tests.support.openapi import CheckedClient
from tests.support.servers import MotoServer, RedisServer, SesLocal, SmtpSink, free_port
from tests.support.smtp_clients import InProcessServer

# The suite is development (CONTRACT §2): the emulators, sinks and LMS databases listen on loopback, and
# the public dev key is fine. Set in the environment so the workers and servers the tests start inherit it.
os.environ.setdefault("OFFLOAD_ALLOW_PRIVATE_ENDPOINTS", "1")
os.environ.setdefault("OFFLOAD_DEV", "1")
# Scratch files (the SQLite database, instance folders, tmp_path, the servers' files) go to memory when the
# machine has /dev/shm: on this disk a commit costs about a millisecond of fsync, and the suite commits tens
# of thousands of times. The SQL and the files are the same; set TMPDIR to choose another place.
if not os.environ.get("TMPDIR") and os.access("/dev/shm", os.W_OK):
    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None
# each test process (xdist runs two) keeps its instance folder (Outbox, local certificates) to itself, away
# from the demo's instance/
os.environ.setdefault("OFFLOAD_INSTANCE_PATH", tempfile.mkdtemp(prefix="offload-test-instance-"))
# providers tested without an app see the same policy the app fixture installs
guard.configure(allow_private=True, production=False)


@pytest.fixture(scope="session")
def database_url():
    """A fresh, migrated database for the run."""
    if os.environ.get("OFFLOAD_TEST_DB") == "postgresql":
        name = f"offload_test_{uuid.uuid4().hex[:8]}"
        url = pg_create(name)
        yield url
        pg_drop(name)
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
        yield start_embedded_redis(port=free_port())


@pytest.fixture(scope="session")
def migrated(database_url, redis_server):
    """Apply the Alembic migrations once (proves they run on this database)."""
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_server}
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", "db", "upgrade"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return database_url


@pytest.fixture
def app(migrated, redis_server):
    """An app on the run's database and Redis, emptied before the test."""
    app = create_app({"database_url": migrated, "redis_url": redis_server, **TEST_SETTINGS})
    app.testing = True
    app.test_client_class = CheckedClient  # every API response is checked against the OpenAPI document
    app.jinja_env.bytecode_cache = JINJA_BYTECODE

    @app.before_request
    def fresh_g():
        # test requests share the test's app context; give each request a clean
        # ``g`` as production does (Flask-Login and Flask-WTF cache in g)
        from flask import g

        g.__dict__.clear()

    @app.teardown_request
    def end_session(exc):
        # and the session ends with the request, as production's does: what the request loaded is not kept
        # for the next one (a worker may change those rows meanwhile); the test's own objects reload on use
        db.session.rollback()

    with app.app_context():
        empty_tables(db)
        connection().flushdb()
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def set_settings(app):
    """Change settings for one test by field name: ``set_settings(batch_size=10)`` installs a copy of
    ``core.settings.current()`` with the changes (the names of ``core.settings.Settings``; a typo is a
    TypeError); the test's settings come back at its end. What ``create_app`` derived from them stays as it
    was: Flask's own keys (``SECRET_KEY``, ...) and what it installed in modules (the endpoint guard, the STS
    and SNS endpoints, the fonts, the encryption key ring)."""
    before = settings.current()
    yield settings.override
    settings.install(before)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_company(app):
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
    def make(email: str, role: str = "manager", company_id: int | None = None,
             password: str = "correct horse battery") -> tuple:
        user = companies.create_user(email, password, role, company_id)
        db.session.commit()
        return user, password

    return make


@pytest.fixture
def auth(client):
    return AuthActions(client)


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


@pytest.fixture
def ses(ses_local):
    """The run's SES emulator with an empty store."""
    ses_local.clear()
    return ses_local


@pytest.fixture
def smtp_sink():
    """A real SMTP server (aiosmtpd, in this process) that keeps every message."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def smtp_server(app):
    """Start SMTP submission (``submission.start``) in this process, on the test's database, Redis and
    settings (change them first with set_settings); stopped after the test."""
    servers = []

    def start() -> InProcessServer:
        server = InProcessServer().start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def s3_bucket(moto_server, monkeypatch, set_settings) -> str:
    """A fresh bucket in moto's S3; boto3's ``AWS_ENDPOINT_URL_S3`` points the storage at moto (the service's
    setting, and the environment of the cloud workers the tests run)."""
    set_settings(aws_endpoint_url_s3=moto_server.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    name = f"certs-{uuid.uuid4().hex[:10]}"
    s3_client().create_bucket(Bucket=name)
    return name
