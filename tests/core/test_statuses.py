"""Statuses are named through ``core.models.statuses``; raw SQL spells none of them."""
from __future__ import annotations

import pytest

from core.models.statuses import (BATCH_FINAL, BATCH_OPEN, R_PENDING, R_UNCERTAIN, RECIPIENT_CLAIMABLE, B_DONE,
                                  FAILED, BatchStatus, sql_in)


def test_sql_in_writes_a_sorted_sql_list():
    assert sql_in(RECIPIENT_CLAIMABLE) == "('pending', 'uncertain')"
    assert sql_in([R_UNCERTAIN, R_PENDING, R_PENDING]) == "('pending', 'uncertain')"
    assert sql_in(BATCH_FINAL) == "('cancelled', 'done', 'failed')"
    assert sql_in([B_DONE]) == "('done')"
    assert sql_in([FAILED, B_DONE]) == "('done', 'failed')"  # members of different enums, same word once


def test_sql_in_takes_only_status_members():
    with pytest.raises(TypeError):
        sql_in(["pending"])
    with pytest.raises(TypeError):
        sql_in([R_PENDING, "x') OR 1=1 --"])
    with pytest.raises(TypeError):
        sql_in(R_PENDING)  # one member is a string: its characters are not statuses
    with pytest.raises(ValueError):
        sql_in([])


def test_batch_open_is_every_batch_status_but_the_final_ones():
    assert BATCH_OPEN | BATCH_FINAL == set(BatchStatus)
    assert not BATCH_OPEN & BATCH_FINAL
