"""suppression lists: an address may be on several (unsubscribe, bounce, complaint, manual); an
unsubscribe stops bulk mail only, so a later bounce must still be recorded on its own list

Revision ID: 0010
Revises: 0009
"""
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_suppressions_company_id", type_="unique")
        batch_op.create_unique_constraint("uq_suppressions_company_id", ["company_id", "email", "reason"])


def downgrade():
    # one row per address again: each address keeps its oldest entry
    op.execute("DELETE FROM suppressions WHERE id NOT IN (SELECT min(id) FROM suppressions s GROUP BY company_id, "
               "email)")
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_suppressions_company_id", type_="unique")
        batch_op.create_unique_constraint("uq_suppressions_company_id", ["company_id", "email"])
