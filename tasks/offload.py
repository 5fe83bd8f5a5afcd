"""The RQ entry points of offload mode: ids in, ``core.delivery.submit`` does the work."""
from __future__ import annotations

from core.delivery import submit


def submit_batches(batch_ids: list[int]) -> dict[str, int]:
    """RQ job: submit up to ten batches to their companies' cloud queues (counts only out)."""
    return submit.submit_batches(batch_ids)


def send_fallback(batch_id: int) -> str:
    """RQ job: send one offload batch through the SMTP fallback."""
    return submit.send_fallback(batch_id)
