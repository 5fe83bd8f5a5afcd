"""What each job used of the cloud, per meter and UTC day (the cost estimates)

Revision ID: 0017
Revises: 0016
"""
from alembic import op
import sqlalchemy as sa

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "job_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("meter", sa.String(length=48), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"],
                                name=op.f("fk_job_usage_company_id_companies"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_usage_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_usage")),
        sa.UniqueConstraint("job_id", "day", "meter", name=op.f("uq_job_usage_job_id")),
    )
    with op.batch_alter_table("job_usage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_usage_company_id"), ["company_id"], unique=False)
        batch_op.create_index("ix_job_usage_company_day", ["company_id", "day"], unique=False)


def downgrade():
    with op.batch_alter_table("job_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_job_usage_company_day")
        batch_op.drop_index(batch_op.f("ix_job_usage_company_id"))
    op.drop_table("job_usage")
