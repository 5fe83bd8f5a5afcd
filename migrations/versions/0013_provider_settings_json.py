"""every provider setting in one encrypted JSON document: the columns of the older providers
(AWS, Cloudflare, HTTPS offload, SMTP) and the company's SNS topic move into
delivery_settings.provider_settings, then go

The values are read as the columns stored them (the secret ones Fernet tokens, decrypted with
the service's keys) and written into the document (``core.crypto.EncryptedJSON``: the JSON,
encrypted as one token), next to what the newer providers already keep there. A company with
an SNS topic and no delivery settings gets a row of defaults to hold it.

Revision ID: 0013
Revises: 0012
"""
import json

import sqlalchemy as sa
from alembic import op

from core.crypto import decrypt, encrypt

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: the columns that move, with their type; True: stored encrypted (``EncryptedText``)
COLUMNS = {
    "aws_access_key": (sa.Text(), True),
    "aws_secret_key": (sa.Text(), True),
    "aws_region": (sa.String(length=32), False),
    "aws_endpoint_url": (sa.String(length=500), False),
    "aws_role_arn": (sa.String(length=300), False),
    "aws_external_id": (sa.String(length=100), False),
    "sqs_queue_url": (sa.String(length=500), False),
    "s3_bucket": (sa.String(length=255), False),
    "s3_endpoint_url": (sa.String(length=500), False),
    "cloudflare_api_token": (sa.Text(), True),
    "cloudflare_account_id": (sa.String(length=64), False),
    "cloudflare_queue_id": (sa.String(length=64), False),
    "cloudflare_api_base": (sa.String(length=500), False),
    "cloudflare_worker_url": (sa.String(length=500), False),
    "offload_url": (sa.String(length=500), False),
    "offload_auth_token": (sa.Text(), True),
    "smtp_host": (sa.String(length=255), False),
    "smtp_port": (sa.Integer(), False),
    "smtp_username": (sa.String(length=255), False),
    "smtp_password": (sa.Text(), True),
    "smtp_tls": (sa.String(length=16), False),
}
#: settings the companies table held
COMPANY_COLUMNS = {"sns_topic_arn": sa.String(length=255)}


def _document(token):
    return json.loads(decrypt(token)) if token else {}


def _token(document: dict):
    return encrypt(json.dumps(document, separators=(",", ":"))) if document else None


def upgrade():
    conn = op.get_bind()
    topics = dict(conn.execute(sa.text("SELECT id, sns_topic_arn FROM companies "
                                       "WHERE sns_topic_arn IS NOT NULL")).all())
    rows = conn.execute(sa.text(f"SELECT id, company_id, provider_settings, {', '.join(COLUMNS)} "
                                "FROM delivery_settings ORDER BY id")).mappings().all()
    for row in rows:
        document = _document(row["provider_settings"])
        for name, (_, secret) in COLUMNS.items():
            if row[name] is not None:
                document[name] = decrypt(row[name]) if secret else row[name]
        topic = topics.pop(row["company_id"], None)
        if topic is not None:
            document["sns_topic_arn"] = topic
        conn.execute(sa.text("UPDATE delivery_settings SET provider_settings = :doc WHERE id = :id"),
                     {"doc": _token(document), "id": row["id"]})
    for company_id, topic in topics.items():  # a company without delivery settings: defaults, and its topic
        conn.execute(sa.text("INSERT INTO delivery_settings (company_id, provider, mode, enabled, updated_at, "
                             "smtp_tls, provider_settings) VALUES (:company, 'smtp', 'direct', :on, "
                             "CURRENT_TIMESTAMP, 'starttls', :doc)"),
                     {"company": company_id, "on": True, "doc": _token({"sns_topic_arn": topic})})
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.drop_column(name)
    with op.batch_alter_table("companies", schema=None) as batch_op:
        for name in COMPANY_COLUMNS:
            batch_op.drop_column(name)


def downgrade():
    with op.batch_alter_table("companies", schema=None) as batch_op:
        for name, kind in COMPANY_COLUMNS.items():
            batch_op.add_column(sa.Column(name, kind, nullable=True))
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        for name, (kind, _) in COLUMNS.items():
            if name == "smtp_tls":
                batch_op.add_column(sa.Column(name, kind, nullable=False, server_default="starttls"))
            else:
                batch_op.add_column(sa.Column(name, kind, nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, company_id, provider_settings FROM delivery_settings")).mappings().all()
    for row in rows:
        document = _document(row["provider_settings"])
        values = {}
        for name, (_, secret) in COLUMNS.items():
            value = document.pop(name, None)
            if value is not None:
                values[name] = encrypt(value) if secret else value
        topic = document.pop("sns_topic_arn", None)
        if topic is not None:
            conn.execute(sa.text("UPDATE companies SET sns_topic_arn = :topic WHERE id = :id"),
                         {"topic": topic, "id": row["company_id"]})
        sets = "".join(f", {name} = :{name}" for name in values)
        conn.execute(sa.text(f"UPDATE delivery_settings SET provider_settings = :doc{sets} WHERE id = :id"),
                     {"doc": _token(document), "id": row["id"], **values})
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        batch_op.alter_column("smtp_tls", server_default=None)
