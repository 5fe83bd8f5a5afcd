"""each backend its own name: the sender "aws" is "ses" (its offload queue: "sqs"), the
Cloudflare Queue "cloudflare_queue"; stored settings and route labels follow

Revision ID: 0011
Revises: 0010
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: route labels (batches and recipients): old → new
ROUTES = {"direct:aws": "direct:ses", "offload:cloudflare": "offload:cloudflare_queue"}


def _rename(routes: dict[str, str], provider: tuple[str, str]) -> None:
    old, new = provider
    op.execute(f"UPDATE delivery_settings SET provider = '{new}' WHERE provider = '{old}'")
    for table in ("batches", "recipients"):
        for before, after in routes.items():
            op.execute(f"UPDATE {table} SET route = '{after}' WHERE route = '{before}'")


def upgrade():
    _rename(ROUTES, ("aws", "ses"))


def downgrade():
    _rename({new: old for old, new in ROUTES.items()}, ("ses", "aws"))
