"""the tenant boundary: the operator's SMTP relay is opt-in per company

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("companies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fallback_relay", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("fallback_sender_domains", sa.String(length=1000), nullable=True))


def downgrade():
    with op.batch_alter_table("companies", schema=None) as batch_op:
        batch_op.drop_column("fallback_sender_domains")
        batch_op.drop_column("fallback_relay")
