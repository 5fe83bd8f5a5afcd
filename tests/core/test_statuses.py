"""Statuses are named through ``core.models.statuses``: ``sql_in``, and a guard that no query
(raw SQL or SQLAlchemy) in core, dashboard or tasks spells a status word again."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.models.statuses import (
    B_DONE,
    BATCH_FINAL,
    BATCH_OPEN,
    FAILED,
    R_PENDING,
    R_UNCERTAIN,
    RECIPIENT_CLAIMABLE,
    BatchStatus,
    JobStatus,
    RecipientStatus,
    sql_in,
)


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


# -- the guard: no bare status word creeps back into a query ------------------------

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("core", "dashboard", "tasks")
WORDS = "|".join(sorted({str(s) for enum in (JobStatus, RecipientStatus, BatchStatus) for s in enum}))
#: raw SQL: ``status = 'sent'``, ``b.status IN ('pending', ...)``, ``status NOT IN ('done', ...)``
SQL_BARE = re.compile(rf"status\s*(?:=|<>|!=|\bIN\b|\bNOT\s+IN\b)\s*\(?\s*'({WORDS})'", re.IGNORECASE)
#: Python and SQLAlchemy: ``Job.status == "paused"``, ``.values(status="failed")``,
#: ``r.status in ("sent", ...)``, ``Recipient.status.in_(("sent", ...))``
CODE_BARE = re.compile(r"status(?:\s*(?:==|!=|=)\s*|\s+(?:not\s+)?in\s+\(\s*|\.(?:not)?in_\(\(\s*)"
                       rf"""["']({WORDS})["']""")


def bare_statuses(source: str) -> list[tuple[int, str]]:
    """(line number, line) of each status comparison that spells a status word."""
    return [(number, line.strip()) for number, line in enumerate(source.splitlines(), 1)
            if SQL_BARE.search(line) or CODE_BARE.search(line)]


def test_the_guard_sees_bare_statuses():
    bad = ['"WHERE job_id = :j AND status = \'sending\'"',
           '"AND b.status IN (\'queued\', \'retry\') "',
           '"AND status NOT IN (\'done\', \'failed\', \'cancelled\')"',
           'Job.status == "paused"',
           '.values(status="failed", error=None)',
           'Recipient.status.in_(("sent", "bounced"))',
           'if r.rstatus in ("failed", "bounced"):']
    assert [n for n, _ in bare_statuses("\n".join(bad))] == list(range(1, len(bad) + 1))
    good = ['f"WHERE job_id = :j AND status = \'{R_SENDING}\'"',
            'f"AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"',
            '"UPDATE batches SET status = :sending"',
            'Job.status == PAUSED',
            'error = \'cancelled\'',
            '{"status": "done", "kind": "email"}',
            'token.get("status") not in (None, "active")']
    assert bare_statuses("\n".join(good)) == []


def test_no_bare_status_in_queries():
    """Statuses in queries come from ``core.models.statuses`` (members, sets, ``sql_in``); a
    provider ``Result``'s from ``providers.ResultStatus``."""
    found = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "core" / "models" / "statuses.py":
                continue
            for number, line in bare_statuses(path.read_text(encoding="utf-8")):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line}")
    assert not found, "bare status words (use core.models.statuses or providers.ResultStatus):\n" + "\n".join(found)
