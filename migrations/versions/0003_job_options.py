"""job options and a separate S3 endpoint

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=True))
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("s3_endpoint_url", sa.String(length=500), nullable=True))


def downgrade():
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        batch_op.drop_column("s3_endpoint_url")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("options")
