"""The wake-up: a worker takes runnable batches from the ready set
(``core.scheduler``) in its order — transactional first, fair shares within
a class — and sends (or, in offload mode, submits) them, one after another.

A worker never sleeps on a company's rate while other work is runnable: a
batch whose company is out of tokens goes back to the ready set with its due
time (``core.delivery.send.BatchRun.defer``) and the worker takes the next
runnable entry. Only when nothing at all is runnable does it nap, in short
slices, for the first entry that will be (at most ``HOLD_S`` ahead); a job
on the high or default queue ends the loop so RQ runs it next.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

from core import queue, scheduler
from core.delivery import limits
from core.delivery.send import BatchRun, run_claimed
from core.delivery.submit import submit_batches

log = logging.getLogger(__name__)
LOOP_S = 60.0    # one wake-up works this long at most, then hands over to a fresh one
RETRY_S = 5.0    # an entry whose run failed unexpectedly comes back after this
MAX_RUNS: int | None = None  # entries one wake-up runs at most (None: no cap; tests set it)


def _put_back(picked: scheduler.Picked) -> None:
    """After an unexpected error: the batch was released for a retry in a few
    seconds (``run_claimed`` / ``submit_batches``); its entry comes back then
    (best effort: with the database down, the sweep re-adds it later)."""
    try:
        if picked.kind == scheduler.SUBMIT:
            queue.enqueue_submit(picked.batch_ids, delay=RETRY_S)
        else:
            queue.enqueue_batches([(b, 0) for b in picked.batch_ids], delay=RETRY_S)
    except Exception as exc:  # noqa: BLE001 (the original error is what the queue must see)
        log.warning("ready-set entry not restored (%s); the sweep will", type(exc).__name__)


def work_ready() -> dict:
    """Run runnable ready-set entries until none is left (or ``LOOP_S``); a wake-up task runs this."""
    conn = queue.connection()
    done: Counter = Counter()
    end = time.monotonic() + LOOP_S
    runs = 0
    while True:
        if queue.urgent_waiting() or time.monotonic() > end or (MAX_RUNS is not None and runs >= MAX_RUNS):
            # let the queue run the urgent job (or a fresh wake-up) first; one wake-up queued per worker, so
            # every worker comes back to the ready set afterwards
            queue.kick(queue.wake_count())
            break
        picked = scheduler.pop(conn)
        if picked is None:
            break
        if isinstance(picked, float):  # nothing runnable yet
            wait = picked - time.time()
            if wait > limits.HOLD_S:
                queue.kick(delay=wait)
                break
            limits.nap(min(max(wait, 0.001), limits.NAP_S))
            done["naps"] += 1
            continue
        runs += 1
        try:
            if picked.kind == scheduler.SUBMIT:
                for key, count in submit_batches(picked.batch_ids).items():
                    done[key] += count
            else:
                done[run_claimed(picked.batch_ids[0], BatchRun)] += 1
        except Exception:
            _put_back(picked)
            raise
    return dict(done)
