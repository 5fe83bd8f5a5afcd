"""The tests' Moodle/IOMAD database is IOMAD's and Moodle's own schema, on both
engines, and a MariaDB that is installed but silent fails the LMS tests
instead of skipping them."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect

from tests.support import moodle as moodle_support
from tests.support.moodle_schema import TABLES
from tests.support.servers import free_port


def test_the_tables_are_iomads_and_moodles_own(moodle):
    found = inspect(moodle.engine)
    prefix = moodle.prefix
    assert set(found.get_table_names()) >= {prefix + t for t in TABLES}
    columns = {c["name"]: c for c in found.get_columns(prefix + "email")}
    assert list(columns) == ["id"] + [f[0] for f in TABLES["email"]["fields"]]
    company = columns["companyid"]
    assert company["nullable"] is False and str(company["default"]).strip("'()") == "0"
    assert columns["headers"]["nullable"] is True and columns["userid"]["nullable"] is False
    # Moodle's keys and indexes: email's foreign keys are plain indexes, company_users' unique pairs stay unique
    email_indexes = {tuple(i["column_names"]) for i in found.get_indexes(prefix + "email")}
    assert {("companyid",), ("userid",), ("senderid",)} <= email_indexes
    unique = {tuple(i["column_names"]) for i in found.get_indexes(prefix + "company_users") if i["unique"]}
    assert unique == {("companyid", "userid"), ("userid", "departmentid")}


def test_a_silent_mariadb_on_a_machine_that_has_one_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setattr(moodle_support, "MARIADB_ADMIN", f"mysql+pymysql://root@127.0.0.1:{free_port()}/")
    monkeypatch.setattr(moodle_support, "mariadb_installed", lambda: True)
    with pytest.raises(pytest.fail.Exception, match="MariaDB is installed on this machine but"):
        moodle_support.MoodleDb("mysql")
    monkeypatch.setattr(moodle_support, "mariadb_installed", lambda: False)
    with pytest.raises(pytest.skip.Exception, match="no MariaDB at 127.0.0.1:3306"):
        moodle_support.MoodleDb("mysql")
