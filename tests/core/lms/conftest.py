"""Fixtures of the LMS connector's tests: a Moodle/IOMAD database on the
machine's real MariaDB or PostgreSQL (fresh per test, each engine with
``mdl_`` and another prefix), and the servers mail goes to."""
from __future__ import annotations

import pytest

from tests.support.lms import ACME_IOMAD, ENGINES, OTHER_IOMAD
from tests.support.moodle import MoodleDb


@pytest.fixture(params=ENGINES, ids=lambda p: f"{p[0]}-{p[1]}")
def moodle(request):
    db_ = MoodleDb(*request.param)
    db_.add_company(ACME_IOMAD, "Acme Learning IOMAD")
    db_.add_company(OTHER_IOMAD, "Other IOMAD Co")
    yield db_
    db_.drop()
