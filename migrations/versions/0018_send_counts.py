"""Counts kept as sends happen (a job's sends per second, a company's outcomes per day and route),
the indexes the pages' queries need, and the counts of the rows already there

Revision ID: 0018
Revises: 0017
"""
from alembic import op
import sqlalchemy as sa

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

#: per dialect: a timestamp truncated to its second
SECOND = {"postgresql": "date_trunc('second', r.sent_at)", "sqlite": "strftime('%Y-%m-%d %H:%M:%S', r.sent_at)"}


def upgrade():
    op.create_table(
        "job_seconds",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("second", sa.DateTime(), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_seconds_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "second", name=op.f("pk_job_seconds")),
    )
    op.create_table(
        "company_days",
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("route", sa.String(length=32), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("bounced", sa.Integer(), nullable=False),
        sa.Column("suppressed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"], name=op.f("fk_company_days_company_id_companies"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("company_id", "day", "route", name=op.f("pk_company_days")),
    )
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index("ix_recipients_job_status")
        batch_op.create_index("ix_recipients_job_status_id", ["job_id", "status", "id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_created", ["created_at"], unique=False)
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_created", ["created_at"], unique=False)
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.create_index("ix_bounce_events_created", ["created_at"], unique=False)
    backfill()


def backfill():
    """The counts of what was sent before: each job's sent recipients by second, each company's by
    day (sent and bounced: the day they were handed over; failed and suppressed: their job's) and
    route."""
    conn = op.get_bind()
    second = SECOND.get(conn.dialect.name, SECOND["postgresql"])
    conn.execute(sa.text(
        f"INSERT INTO job_seconds (job_id, second, company_id, sent) "
        f"SELECT r.job_id, {second}, min(r.company_id), count(*) FROM recipients r "
        f"WHERE r.sent_at IS NOT NULL AND r.status = 'sent' GROUP BY r.job_id, {second}"))
    conn.execute(sa.text(
        "INSERT INTO company_days (company_id, day, route, sent, failed, bounced, suppressed) "
        "SELECT r.company_id, date(coalesce(r.sent_at, j.created_at)), coalesce(r.route, ''), "
        "sum(CASE WHEN r.status = 'sent' THEN 1 ELSE 0 END), sum(CASE WHEN r.status = 'failed' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN r.status = 'bounced' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN r.status = 'suppressed' THEN 1 ELSE 0 END) "
        "FROM recipients r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.status IN ('sent', 'bounced', 'failed', 'suppressed') "
        "GROUP BY r.company_id, date(coalesce(r.sent_at, j.created_at)), coalesce(r.route, '')"))


def downgrade():
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.drop_index("ix_bounce_events_created")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_created")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_created")
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_index("ix_recipients_job_status_id")
        batch_op.create_index("ix_recipients_job_status", ["job_id", "status"], unique=False)
    op.drop_table("company_days")
    op.drop_table("job_seconds")
