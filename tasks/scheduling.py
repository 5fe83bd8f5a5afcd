"""The RQ entry point of the wake-up: work the ready set (``core.delivery.ready``)."""
from __future__ import annotations

from core.delivery import ready


def work_ready() -> dict:
    """RQ job: send or submit runnable ready-set entries until none is left (or the loop's time is up)."""
    return ready.work_ready()
