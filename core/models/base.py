"""What every table shares: naive UTC time and the tenant mixin."""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import ForeignKey, Integer, select
from sqlalchemy.orm import Mapped, mapped_column


def utcnow() -> datetime:
    """Naive UTC now: every timestamp in the database is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class TenantMixin:
    """Rows owned by one company; read them only through ``scoped``."""

    company_id: Mapped[int] = mapped_column(Integer, ForeignKey("companies.id", ondelete="CASCADE"),
                           nullable=False, index=True)

    @classmethod
    def scoped(cls, company_id: int | None):
        """A ``select`` of this model limited to ``company_id`` (``None``: every company)."""
        stmt = select(cls)
        if company_id is not None:
            stmt = stmt.where(cls.company_id == company_id)
        return stmt
