"""Fixtures for the sending pipeline: companies wired to real servers."""
from __future__ import annotations
import pytest
from tests.support.servers import SmtpSink


@pytest.fixture
def smtp_sink():
    """A real SMTP server (aiosmtpd) that keeps every message."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def ses(ses_local):
    """The SES emulator with an empty store."""
    ses_local.clear()
    return ses_local
