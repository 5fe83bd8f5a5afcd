"""HTTPS offload: the company's endpoint URL and its authentication token

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("offload_url", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("offload_auth_token", sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        batch_op.drop_column("offload_auth_token")
        batch_op.drop_column("offload_url")
