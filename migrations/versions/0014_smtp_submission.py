"""SMTP submission: the messages it took, until and after they are jobs

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "smtp_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("job_type", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("mail_from", sa.String(length=320), nullable=False),
        sa.Column("rcpt_to", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        # a Fernet token of the MIME bytes (core.crypto.EncryptedBytes): text in the database
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("storage_key", sa.String(length=512), nullable=True),
        sa.Column("peer", sa.String(length=64), nullable=True),
        sa.Column("token_prefix", sa.String(length=16), nullable=True),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"], name=op.f("fk_smtp_messages_company_id_companies"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_smtp_messages_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smtp_messages")),
    )
    with op.batch_alter_table("smtp_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_smtp_messages_company_id"), ["company_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_smtp_messages_job_id"), ["job_id"], unique=False)
        batch_op.create_index("ix_smtp_messages_waiting", ["status", "company_id", "job_type", "id"], unique=False)


def downgrade():
    with op.batch_alter_table("smtp_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_smtp_messages_waiting")
        batch_op.drop_index(batch_op.f("ix_smtp_messages_job_id"))
        batch_op.drop_index(batch_op.f("ix_smtp_messages_company_id"))
    op.drop_table("smtp_messages")
