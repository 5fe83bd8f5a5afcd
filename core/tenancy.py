"""The one way to read tenant-owned rows.

``get_or_404(Model, id, company_id)`` returns the row only when it belongs
to ``company_id`` (``None`` means an admin, who sees every company); any
other row is a 404, exactly like a row that does not exist.
"""
from __future__ import annotations

from flask import abort

from core.db import db


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
    """The row with ``object_id`` if ``company_id`` may see it, else abort 404."""
    row = get_scoped(model, object_id, company_id)
    if row is None:
        abort(404)
    return row
