"""Migrations: one head, apply on SQLite and PostgreSQL, match the models."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from core.db import db
from dashboard import create_app

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLASK = os.path.join(ROOT, ".venv", "bin", "flask")


def script_dir() -> ScriptDirectory:
    cfg = Config(os.path.join(ROOT, "migrations", "alembic.ini"))
    cfg.set_main_option("script_location", os.path.join(ROOT, "migrations"))
    return ScriptDirectory.from_config(cfg)


def test_single_head():
    assert len(script_dir().get_heads()) == 1


def upgrade(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def assert_matches_models(url: str) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
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
