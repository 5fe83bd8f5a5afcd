"""The wake-up: a worker takes runnable batches from the ready set
(``core.scheduler``) in its order — transactional first, fair shares within
a class — and sends (or, in offload mode, submits) them, one after another.

A worker never sleeps on a company's rate while other work is runnable: a
batch whose company is out of tokens goes back to the ready set with its due
time (``core.delivery.send.BatchRun.defer``) and the worker takes the next
runnable entry. Only when nothing at all is runnable does it nap, in short
slices, for the first entry that will be (at most ``HOLD_S`` ahead); a job
on the high or default queue ends the loop so RQ runs it next, once the wake-up has had its turn
(``core.queue.SEND_TURN_S``: while plans keep coming, sending still gets its share of the workers).
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


def _put_back(kind: str, batch_ids: list[int]) -> None:
    """After an unexpected error: the batch was released for a retry in a few
    seconds (``run_claimed`` / ``submit_batches``); its entry comes back then
    (best effort: with the database down, the sweep re-adds it later)."""
    try:
        if kind == scheduler.SUBMIT:
            queue.enqueue_submit(batch_ids, delay=RETRY_S)
        else:
            queue.enqueue_batches([(b, 0) for b in batch_ids], delay=RETRY_S)
    except Exception as exc:  # noqa: BLE001 (the original error is what the queue must see)
        log.warning("ready-set entry not restored (%s); the sweep will", type(exc).__name__)


def send_first(batch_id: int) -> str:
    """The plan task's send of a transactional job's first batch (``core.delivery.plan.plan_job``): as a
    wake-up would run it, the claim deciding who sends; a company out of tokens puts it in the ready set
    with its due time (``BatchRun.defer``). After an unexpected error it goes to the ready set for a retry
    (``_put_back``) and the error is raised."""
    try:
        return run_claimed(batch_id, BatchRun)
    except Exception:
        _put_back(scheduler.DIRECT, [batch_id])
        raise


def work_ready() -> dict:
    """Run runnable ready-set entries until none is left (or ``LOOP_S``); a wake-up task runs this."""
    conn = queue.connection()
    done: Counter = Counter()
    started = time.monotonic()
    end, turn = started + LOOP_S, started + queue.SEND_TURN_S
    runs = 0
    while True:
        now = time.monotonic()
        if (now >= turn and queue.urgent_waiting()) or now > end or (MAX_RUNS is not None and runs >= MAX_RUNS):
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
            _put_back(picked.kind, picked.batch_ids)
            raise
    return dict(done)
