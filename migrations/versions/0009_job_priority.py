"""a job's service class (transactional | bulk) for fair, priority-aware scheduling

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.String(length=16), nullable=False,
                                      server_default="transactional"))
    op.execute("UPDATE jobs SET priority = 'bulk' WHERE type = 'reengagement'")


def downgrade():
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("priority")
