"""Extra headers per message (List-Unsubscribe for bulk and re-engagement mail)."""
from __future__ import annotations

from core.models import is_bulk
from core.unsubscribe import unsubscribe_url


def extra_headers(company, job_type: str, priority: str | None, recipient_id: int, email: str) -> dict[str, str]:
    """Headers to add to one recipient's message; none for transactional mail.

    Bulk and re-engagement mail carries a one-click unsubscribe link (RFC 2369
    + RFC 8058); transactional mail (passwords, accounts, licences,
    certificates, notifications, IOMAD's queue) never does.
    """
    if not is_bulk(job_type, priority):
        return {}
    return {"List-Unsubscribe": f"<{unsubscribe_url(company.id, email)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
