"""settings of providers without a column of their own, one encrypted JSON document

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    # a Fernet token of the JSON object (core.crypto.EncryptedJSON): text in the database
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_settings", sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table("delivery_settings", schema=None) as batch_op:
        batch_op.drop_column("provider_settings")
