"""Migrations: one head, apply on SQLite and PostgreSQL, match the models, and carry the
data of a database at an earlier revision forward."""
from __future__ import annotations

import os
import subprocess
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Boolean, DateTime, Float, Integer, Numeric, create_engine, inspect, text

from core.db import db
from service import create_app
from tests.support.imports import STDLIB, outside

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLASK = os.path.join(ROOT, ".venv", "bin", "flask")


def script_dir() -> ScriptDirectory:
    cfg = Config(os.path.join(ROOT, "migrations", "alembic.ini"))
    cfg.set_main_option("script_location", os.path.join(ROOT, "migrations"))
    return ScriptDirectory.from_config(cfg)


def test_single_head():
    assert len(script_dir().get_heads()) == 1


#: what a migration may import of ours: the database handle and the column types' encryption, never the
#: domain's logic (a migration must replay the same way after that logic changed)
MIGRATIONS_MAY_IMPORT = ("core.db", "core.crypto")


def test_migrations_import_alembic_sqlalchemy_and_the_database_level_of_core_only():
    def allowed(module: str, path) -> bool:
        top = module.split(".")[0]
        if module in MIGRATIONS_MAY_IMPORT or top in STDLIB or top in ("alembic", "sqlalchemy"):
            return True
        return path.name == "env.py" and module == "flask"  # Flask-Migrate's options, from its app context

    assert outside(Path(ROOT) / "migrations", allowed) == []


def upgrade(url: str, revision: str = "head", *, down: bool = False) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run([FLASK, "--app", "wsgi", "db", "downgrade" if down else "upgrade", revision], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def assert_matches_models(url: str) -> None:
    app = create_app({"database_url": url})
    with app.app_context():
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = compare_metadata(ctx, db.metadata)
        db.engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_migrations_apply_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(url)
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"jobs", "recipients", "batches", "companies", "audit_log"} <= tables
    assert_matches_models(url)


def test_migrations_apply_on_postgresql():
    psycopg = pytest.importorskip("psycopg")
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    name = f"offload_mig_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        upgrade(url)
        upgrade(url)  # idempotent: already at head
        assert_matches_models(url)
    finally:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.close()


# --------------------------------------------------------------------------- data carried forward


@contextmanager
def empty_database(kind: str, tmp_path):
    """The URL of a new, empty database on SQLite or PostgreSQL (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/data.db"
        return
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    name = f"offload_mig_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def insert(conn, table: str, **values) -> None:
    """A row of ``table`` as the schema stands: ``values``, and a plain value for every other
    column that may not be null and has no default (so the row suits any revision)."""
    schema = inspect(conn)
    keys = set(schema.get_pk_constraint(table)["constrained_columns"])
    for column in schema.get_columns(table):
        name, kind = column["name"], column["type"]
        if name in values or name in keys or column["nullable"] or column.get("default") is not None:
            continue
        values[name] = (False if isinstance(kind, Boolean) else datetime(2026, 1, 1) if isinstance(kind, DateTime)
                        else 0 if isinstance(kind, (Integer, Float, Numeric)) else "x")
    names = ", ".join(values)
    conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)


def seed_jobs(conn, company_id: int, routes: list[str]) -> None:
    """A job of ``company_id`` with one batch and one recipient per route label."""
    insert(conn, "jobs", id=company_id, company_id=company_id, type="notification", status="completed")
    for n, route in enumerate(routes, start=1):
        batch_id = company_id * 100 + n
        insert(conn, "batches", id=batch_id, job_id=company_id, company_id=company_id, batch_number=n, status="done",
               route=route, first_recipient_id=batch_id, last_recipient_id=batch_id, recipient_count=1)
        insert(conn, "recipients", id=batch_id, job_id=company_id, company_id=company_id, email=f"r{n}@acme.test",
               status="sent", route=route)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_provider_names_move_to_each_backends_own(kind, tmp_path):
    """0011: the sender "aws" becomes "ses" (its queue "sqs"), the Cloudflare Queue's route
    "offload:cloudflare_queue"; other values stay; a downgrade brings the old names back."""
    with empty_database(kind, tmp_path) as url:
        upgrade(url, "0010")
        engine = create_engine(url)
        with engine.begin() as conn:
            for cid, provider in ((1, "aws"), (2, "cloudflare"), (3, "sendgrid")):
                insert(conn, "companies", id=cid, name=f"Company {cid}", callback_secret="x")
                insert(conn, "delivery_settings", company_id=cid, provider=provider, mode="direct", enabled=True,
                       smtp_tls="starttls")
            seed_jobs(conn, 1, ["direct:aws", "offload:sqs", "fallback:smtp"])
            seed_jobs(conn, 2, ["direct:cloudflare", "offload:cloudflare", "offload:https"])

        def stored():
            with engine.connect() as conn:
                return (dict(conn.execute(text("SELECT company_id, provider FROM delivery_settings")).all()),
                        sorted(conn.execute(text("SELECT route FROM batches")).scalars()),
                        sorted(conn.execute(text("SELECT route FROM recipients")).scalars()))

        before = stored()
        upgrade(url, "0011")
        providers, batch_routes, recipient_routes = stored()
        assert providers == {1: "ses", 2: "cloudflare", 3: "sendgrid"}
        assert batch_routes == recipient_routes == sorted(["direct:ses", "offload:sqs", "fallback:smtp",
                                                           "direct:cloudflare", "offload:cloudflare_queue",
                                                           "offload:https"])
        upgrade(url, "0010", down=True)
        assert stored() == before
        engine.dispose()
