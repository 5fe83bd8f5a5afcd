"""Fixtures for the sending pipeline: companies wired to real servers."""
from __future__ import annotations

import pytest
from aiosmtpd.controller import Controller

from tests.support.servers import free_port


class SmtpSink:
    """An aiosmtpd server that keeps every message; ``refuse`` addresses get 550."""

    def __init__(self, refuse: str | None = None):
        self.messages: list = []
        self.refuse = refuse
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse and self.refuse in address:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"

    def recipients(self) -> list[str]:
        return [rcpt for env in self.messages for rcpt in env.rcpt_tos]

    def config(self) -> dict:
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port, "smtp_tls": "none"}


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture
def ses(ses_local):
    """The SES emulator with an empty store."""
    ses_local.clear()
    return ses_local


def aws_settings(endpoint: str) -> dict:
    return {"provider": "aws", "aws_endpoint_url": endpoint, "aws_region": "us-east-1",
            "aws_access_key": "AKIATESTTESTTEST", "aws_secret_key": "test-secret", "sender": "noreply@acme.test"}
