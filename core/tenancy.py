"""The one way to read tenant-owned rows.

``get_or_404(Model, id, company_id)`` returns the row only when it belongs
to ``company_id`` (``None`` means an admin, who sees every company); any
other row raises ``NotFound``, exactly like a row that does not exist. The
web side answers ``NotFound`` with its 404 (``dashboard.errors``: JSON for the
API and callbacks, the error page elsewhere).
"""
from __future__ import annotations

from core.db import db


class NotFound(LookupError):
    """No such row for this company: another company's row and a missing one look the same."""


def scoped(model, company_id: int | None):
    """``select(model)`` limited to one company (or all, for ``None``)."""
    return model.scoped(company_id)


def get_scoped(model, object_id, company_id: int | None):
    """The row with ``object_id`` if ``company_id`` may see it, else ``None``."""
    try:
        object_id = int(object_id)
    except (TypeError, ValueError):
        return None
    stmt = model.scoped(company_id).where(model.id == object_id)
    return db.session.execute(stmt).scalar_one_or_none()


def get_or_404(model, object_id, company_id: int | None):
    """The row with ``object_id`` if ``company_id`` may see it, else raise ``NotFound``."""
    row = get_scoped(model, object_id, company_id)
    if row is None:
        raise NotFound(f"no {model.__name__} {object_id!r} for this company")
    return row
