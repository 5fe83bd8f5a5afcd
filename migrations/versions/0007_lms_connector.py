"""LMS connector: switches on campaign_settings, taken IOMAD email rows, completions

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("campaign_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("iomad_email_queue", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("lms_completions", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("lms_dataroot", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("completions_after_time", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("completions_after_id", sa.BigInteger(), nullable=True))

    op.create_table(
        "lms_email_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lms_row_id", sa.BigInteger(), nullable=False),
        sa.Column("templatename", sa.String(length=100), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("recipient_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("marked_at", sa.DateTime(), nullable=True),
        sa.Column("sent_time", sa.BigInteger(), nullable=True),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"], name=op.f("fk_lms_email_rows_company_id_companies"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_lms_email_rows_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["recipient_id"], ["recipients.id"],
                                name=op.f("fk_lms_email_rows_recipient_id_recipients"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lms_email_rows")),
        sa.UniqueConstraint("company_id", "lms_row_id", name=op.f("uq_lms_email_rows_company_id")),
    )
    with op.batch_alter_table("lms_email_rows", schema=None) as batch_op:
        batch_op.create_index("ix_lms_email_rows_unmarked", ["company_id", "marked_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_lms_email_rows_company_id"), ["company_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lms_email_rows_job_id"), ["job_id"], unique=False)

    op.create_table(
        "lms_completions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lms_user_id", sa.BigInteger(), nullable=False),
        sa.Column("lms_course_id", sa.BigInteger(), nullable=False),
        sa.Column("timecompleted", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("skipped", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"], name=op.f("fk_lms_completions_company_id_companies"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_lms_completions_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lms_completions")),
        sa.UniqueConstraint("company_id", "lms_user_id", "lms_course_id", name=op.f("uq_lms_completions_company_id")),
    )
    with op.batch_alter_table("lms_completions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lms_completions_company_id"), ["company_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lms_completions_job_id"), ["job_id"], unique=False)


def downgrade():
    with op.batch_alter_table("lms_completions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lms_completions_job_id"))
        batch_op.drop_index(batch_op.f("ix_lms_completions_company_id"))
    op.drop_table("lms_completions")
    with op.batch_alter_table("lms_email_rows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lms_email_rows_job_id"))
        batch_op.drop_index(batch_op.f("ix_lms_email_rows_company_id"))
        batch_op.drop_index("ix_lms_email_rows_unmarked")
    op.drop_table("lms_email_rows")
    with op.batch_alter_table("campaign_settings", schema=None) as batch_op:
        for column in ("completions_after_id", "completions_after_time", "lms_dataroot", "lms_completions",
                       "iomad_email_queue"):
            batch_op.drop_column(column)
