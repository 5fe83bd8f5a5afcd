"""Fixtures for certificates: companies wired to real storage (moto's S3, R2 behind
certificates.js in miniflare) and to the SES emulator, and certificate jobs via the API."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from core import companies
from core.db import db
from tests.support.servers import CertificateGateway


@pytest.fixture
def gateway_for() -> Iterator[Callable]:
    """Start certificates.js in miniflare signed with a company's callback secret, and
    point the company's ``cloudflare_worker_url`` at it."""
    started: list[CertificateGateway] = []

    def start(company) -> CertificateGateway:
        gateway = CertificateGateway(company.secret).start()
        started.append(gateway)
        companies.configure(company.company, {"cloudflare_worker_url": gateway.url})
        db.session.commit()
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(autouse=True)
def generous_rate_limit(app, set_settings):
    """Tests follow many links from one IP; the rate-limit test lowers this itself."""
    set_settings(verify_rate_per_min=100_000)
