"""The RQ entry point of certificate issuing (``core.certificate_issue``)."""
from __future__ import annotations

from core import certificate_issue


def issue_certificates(job_id: int) -> int:
    """RQ job: issue the job's missing certificates, then queue its planning; returns how many."""
    return certificate_issue.issue(job_id)
