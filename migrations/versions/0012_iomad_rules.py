"""IOMAD's rules: copies of a row (emailto/emailcc, managers, supervisors), the site queue and the purge
switches, the completions id watermark

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("campaign_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("iomad_site_queue", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("iomad_purge", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("iomad_purged_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("completions_scan_id", sa.BigInteger(), nullable=True))

    op.create_table(
        "lms_email_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("row_id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"], name=op.f("fk_lms_email_copies_company_id_companies"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["row_id"], ["lms_email_rows.id"], name=op.f("fk_lms_email_copies_row_id_lms_email_rows"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["recipient_id"], ["recipients.id"],
                                name=op.f("fk_lms_email_copies_recipient_id_recipients"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lms_email_copies")),
        sa.UniqueConstraint("row_id", "email", name=op.f("uq_lms_email_copies_row_id")),
    )
    with op.batch_alter_table("lms_email_copies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lms_email_copies_company_id"), ["company_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lms_email_copies_row_id"), ["row_id"], unique=False)


def downgrade():
    with op.batch_alter_table("lms_email_copies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lms_email_copies_row_id"))
        batch_op.drop_index(batch_op.f("ix_lms_email_copies_company_id"))
    op.drop_table("lms_email_copies")
    with op.batch_alter_table("campaign_settings", schema=None) as batch_op:
        batch_op.drop_column("completions_scan_id")
        batch_op.drop_column("iomad_purged_at")
        batch_op.drop_column("iomad_purge")
        batch_op.drop_column("iomad_site_queue")
