"""The app under test: databases, logins, CSRF tokens, running the queue in-process."""
from __future__ import annotations

import os
import re

from jinja2 import BytecodeCache
from sqlalchemy import text

from core.queue import QUEUE_NAMES, connection
from tasks.rq_queue import get_queue
from tasks.worker import AppWorker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


PG_ADMIN_URL = os.environ.get("OFFLOAD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_create(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        # the run's database need not survive a crash of the machine's server (the fault tests that restart
        # PostgreSQL run their own cluster, durable as in production): commits return without waiting on fsync
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: the suite's settings over the environment's (``core.settings.Settings`` field names)
TEST_SETTINGS = {
    # the suite hashes and checks hundreds of passwords: PBKDF2 with one round instead of scrypt's 70 ms of
    # CPU each. The method is recorded in each hash; test_h09_logins and the live servers run scrypt, as
    # production does.
    "password_hash_method": "pbkdf2:sha256:1",
    "lease_s": 30,
    "sweep_s": 2,
}


class SharedBytecodeCache(BytecodeCache):
    """Compiled templates shared by the apps of one test process (each test builds its own app, and each app
    would parse and compile the same templates again). Jinja checks the source's checksum on every load."""

    def __init__(self):
        self.code: dict[str, bytes] = {}

    def load_bytecode(self, bucket):
        if bucket.key in self.code:
            bucket.bytecode_from_string(self.code[bucket.key])

    def dump_bytecode(self, bucket):
        self.code[bucket.key] = bucket.bytecode_to_string()


JINJA_BYTECODE = SharedBytecodeCache()


def empty_tables(db) -> None:
    tables = [t.name for t in reversed(db.metadata.sorted_tables)]
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    else:
        for name in tables:
            db.session.execute(text(f"DELETE FROM {name}"))
    db.session.commit()


class CompanyFixture:
    """A company with its plaintext API token and callback secret."""

    def __init__(self, company, token: str, secret: str):
        self.company, self.id, self.token, self.secret = company, company.id, token, secret

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


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


def run_worker_burst(app, max_jobs: int | None = None) -> None:
    """Process every queued RQ job in this process (burst mode; jobs scheduled for later stay scheduled)."""
    AppWorker.app = app
    worker = AppWorker([get_queue(n) for n in QUEUE_NAMES], connection=connection())
    worker.work(burst=True, max_jobs=max_jobs, with_scheduler=False, logging_level="WARNING")
