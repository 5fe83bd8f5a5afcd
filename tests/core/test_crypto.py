"""Secrets and recipient data are encrypted at rest; keys rotate."""
from __future__ import annotations

from cryptography.fernet import Fernet
from sqlalchemy import text

from core import crypto, settings
from core.companies import configure
from core.db import db
from core.models import Company, Recipient
from core.rotation import reencrypt_all

CANARY_PASSWORD = "Canary-Pa55word-7f3a"
CANARY_SECRET = "canary-aws-secret-91c2"


def raw_dump() -> str:
    """Every value of every table, read with plain SQL (what a database thief sees)."""
    chunks = []
    for table in db.metadata.sorted_tables:
        for row in db.session.execute(text(f"SELECT * FROM {table.name}")).all():
            chunks.append(" ".join(str(v) for v in row))
    return "\n".join(chunks)


def make_job_with_secret(client, company):
    company_row = db.session.get(Company, company.id)
    configure(company_row, {"aws_secret_key": CANARY_SECRET, "smtp_password": CANARY_SECRET + "-smtp"})
    db.session.commit()
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Welcome", "body_text": "Your password is {{ password }}",
        "recipients": [{"email": "ann@acme.test", "data": {"password": CANARY_PASSWORD, "license": "LIC-CANARY"}}]})
    assert resp.status_code == 202
    return resp.json["id"]


def test_raw_database_shows_no_plaintext_secret(client, company):
    make_job_with_secret(client, company)
    dump = raw_dump()
    for canary in (CANARY_PASSWORD, CANARY_SECRET, "LIC-CANARY", company.secret, company.token):
        assert canary not in dump
    # ...while the application reads them back
    row = db.session.query(Recipient).one()
    assert row.data["password"] == CANARY_PASSWORD
    assert db.session.get(Company, company.id).settings.get_setting("aws_secret_key") == CANARY_SECRET


def test_rotation_reencrypts_and_old_ciphertext_reads_before(app, client, company):
    make_job_with_secret(client, company)
    old_key = settings.current().encryption_keys[0]
    new_key = Fernet.generate_key()
    before = db.session.execute(text("SELECT data FROM recipients")).scalar()
    try:
        crypto.configure([new_key, old_key])  # new key first, old still accepted
        db.session.expire_all()
        assert db.session.query(Recipient).one().data["password"] == CANARY_PASSWORD  # old ciphertext reads
        counts = reencrypt_all()
        assert counts["recipients"] == 1 and counts["companies"] == 1 and counts["delivery_settings"] == 1
        after = db.session.execute(text("SELECT data FROM recipients")).scalar()
        assert after != before
        crypto.configure([new_key])  # the old key retired: everything still reads
        db.session.expire_all()
        assert db.session.query(Recipient).one().data["password"] == CANARY_PASSWORD
        assert db.session.get(Company, company.id).settings.get_setting("aws_secret_key") == CANARY_SECRET
        assert Fernet(new_key).decrypt(after.encode())
    finally:
        crypto.configure(settings.current().encryption_keys)


def test_keys_rotate_cli(app, runner, client, company):
    make_job_with_secret(client, company)
    result = runner.invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert "recipients: 1" in result.output
