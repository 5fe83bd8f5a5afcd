"""Migrations: one head, apply on SQLite and PostgreSQL, match the models, and carry the
data of a database at an earlier revision forward."""
from __future__ import annotations

import json
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
from cryptography.fernet import Fernet
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


def upgrade(url: str, revision: str = "head", *, down: bool = False, keys: str | None = None) -> None:
    env = {**os.environ, "DATABASE_URL": url, **({"OFFLOAD_ENCRYPTION_KEYS": keys} if keys else {})}
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


#: what the older providers kept in columns of delivery_settings, one value each (secrets encrypted)
OLD_COLUMNS = {
    "aws_access_key": "AKIAOLDCOLUMN0000001", "aws_secret_key": "old-column-aws-secret", "aws_region": "eu-west-1",
    "aws_endpoint_url": "https://email.eu-west-1.amazonaws.com", "aws_role_arn": "arn:aws:iam::123456789012:role/x",
    "aws_external_id": "ext-0123456789", "sqs_queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q",
    "s3_bucket": "certs", "s3_endpoint_url": "https://s3.eu-west-1.amazonaws.com",
    "cloudflare_api_token": "old-column-cf-token", "cloudflare_account_id": "acc1", "cloudflare_queue_id": "q1",
    "cloudflare_api_base": "https://api.cloudflare.com/client/v4",
    "cloudflare_worker_url": "https://w.acme.workers.dev", "offload_url": "https://abc.execute-api.x/batches",
    "offload_auth_token": "old-column-offload-token", "smtp_host": "mail.acme.test", "smtp_port": 2525,
    "smtp_username": "mailer", "smtp_password": "old-column-smtp-password", "smtp_tls": "tls",
}
OLD_SECRETS = ("aws_access_key", "aws_secret_key", "cloudflare_api_token", "offload_auth_token", "smtp_password")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_provider_settings_move_from_their_columns_into_the_encrypted_document(kind, tmp_path):
    """0013: every value of the old columns (and the company's SNS topic) arrives in
    provider_settings, next to what the newer providers kept there; the columns go; the
    document is one Fernet token; a downgrade puts everything back."""
    key = Fernet.generate_key()
    fernet = Fernet(key)
    with empty_database(kind, tmp_path) as url:
        upgrade(url, "0012", keys=key.decode())
        engine = create_engine(url)
        with engine.begin() as conn:
            stored = {k: fernet.encrypt(v.encode()).decode() if k in OLD_SECRETS else v for k, v in OLD_COLUMNS.items()}
            insert(conn, "companies", id=1, name="Everything", callback_secret="x", sns_topic_arn="arn:aws:sns:x:1:t")
            insert(conn, "delivery_settings", company_id=1, provider="ses", mode="offload", enabled=True,
                   sender="noreply@acme.test", max_send_rate=12.5,
                   provider_settings=fernet.encrypt(b'{"sendgrid_api_key":"SG.kept"}').decode(), **stored)
            insert(conn, "companies", id=2, name="Defaults", callback_secret="x")
            insert(conn, "delivery_settings", company_id=2, provider="smtp", mode="direct", enabled=False,
                   smtp_tls="starttls")
            insert(conn, "companies", id=3, name="Topic only", callback_secret="x", sns_topic_arn="arn:aws:sns:x:1:u")

        def documents():
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT company_id, provider, mode, enabled, sender, max_send_rate, "
                                         "provider_settings FROM delivery_settings ORDER BY company_id")).all()
            return {r.company_id: ((r.provider, r.mode, bool(r.enabled), r.sender, r.max_send_rate),
                                   json.loads(fernet.decrypt(r.provider_settings.encode())))
                    for r in rows}

        upgrade(url, "0013", keys=key.decode())
        found = documents()
        assert found[1] == (("ses", "offload", True, "noreply@acme.test", 12.5),
                            {**OLD_COLUMNS, "sendgrid_api_key": "SG.kept", "sns_topic_arn": "arn:aws:sns:x:1:t"})
        assert found[2] == (("smtp", "direct", False, None, None), {"smtp_tls": "starttls"})
        assert found[3][1] == {"sns_topic_arn": "arn:aws:sns:x:1:u"}
        schema = inspect(engine)
        left = {c["name"] for c in schema.get_columns("delivery_settings")}
        assert left == {"id", "company_id", "provider", "mode", "enabled", "sender", "max_send_rate",
                        "provider_settings", "updated_at"}
        assert "sns_topic_arn" not in {c["name"] for c in schema.get_columns("companies")}
        with engine.connect() as conn:
            raw = " ".join(conn.execute(text("SELECT provider_settings FROM delivery_settings")).scalars())
        assert not any(value in raw for value in ("old-column", "AKIAOLD", "SG.kept", "mail.acme.test"))

        upgrade(url, "0012", down=True, keys=key.decode())
        with engine.connect() as conn:
            back = conn.execute(text(f"SELECT {', '.join(OLD_COLUMNS)}, provider_settings FROM delivery_settings "
                                     "WHERE company_id = 1")).mappings().one()
            topics = dict(conn.execute(text("SELECT id, sns_topic_arn FROM companies")).all())
        assert {k: fernet.decrypt(back[k].encode()).decode() if k in OLD_SECRETS else back[k] for k in OLD_COLUMNS} \
            == OLD_COLUMNS
        assert json.loads(fernet.decrypt(back["provider_settings"].encode())) == {"sendgrid_api_key": "SG.kept"}
        assert topics == {1: "arn:aws:sns:x:1:t", 2: None, 3: "arn:aws:sns:x:1:u"}
        engine.dispose()
