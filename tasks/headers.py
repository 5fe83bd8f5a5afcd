"""Extra headers per message (List-Unsubscribe for campaign mail)."""
from __future__ import annotations


def extra_headers(company, job_type: str, recipient_id: int, email: str) -> dict[str, str]:
    """Headers to add to one recipient's message; none for transactional mail."""
    return {}
