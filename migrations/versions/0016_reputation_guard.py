"""The reputation guard's state on the company; recipients by company and send time

A company's bulk sending pauses itself when its rolling bounce or complaint rate passes its
threshold (core.reputation): when and why it paused, and when a person resumed it (the guard
judges only the sends after that). The index serves the company's rolling window and rates
(core.counts): its last sends, newest first.

Revision ID: 0016
Revises: 0015
"""
from alembic import op
import sqlalchemy as sa

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("companies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reputation_paused_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("reputation_reason", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("reputation_resumed_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.create_index("ix_recipients_company_sent", ["company_id", "sent_at"], unique=False)


def downgrade():
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index("ix_recipients_company_sent")
    with op.batch_alter_table("companies", schema=None) as batch_op:
        batch_op.drop_column("reputation_resumed_at")
        batch_op.drop_column("reputation_reason")
        batch_op.drop_column("reputation_paused_at")
