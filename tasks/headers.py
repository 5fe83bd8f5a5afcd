"""Extra headers per message (List-Unsubscribe for campaign mail)."""
from __future__ import annotations

from core.unsubscribe import CAMPAIGN_TYPES, unsubscribe_url


def extra_headers(company, job_type: str, recipient_id: int, email: str) -> dict[str, str]:
    """Headers to add to one recipient's message; none for transactional mail.

    Campaign mail (re-engagement, notifications) carries a one-click
    unsubscribe link (RFC 2369 + RFC 8058); password, license and
    certificate mail does not.
    """
    if job_type not in CAMPAIGN_TYPES:
        return {}
    return {"List-Unsubscribe": f"<{unsubscribe_url(company.id, email)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
