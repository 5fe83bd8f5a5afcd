"""LMS events stored before their 202, until their window makes them recipients

Revision ID: 0015
Revises: 0014
"""
from alembic import op
import sqlalchemy as sa

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "waiting_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_type", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        # a Fernet token of the event's JSON (core.crypto.EncryptedJSON): text in the database
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"],
                                name=op.f("fk_waiting_events_company_id_companies"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waiting_events")),
    )
    with op.batch_alter_table("waiting_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_waiting_events_company_id"), ["company_id"], unique=False)
        batch_op.create_index("ix_waiting_events_window", ["company_id", "job_type", "id"], unique=False)


def downgrade():
    with op.batch_alter_table("waiting_events", schema=None) as batch_op:
        batch_op.drop_index("ix_waiting_events_window")
        batch_op.drop_index(batch_op.f("ix_waiting_events_company_id"))
    op.drop_table("waiting_events")
