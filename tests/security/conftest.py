"""Fixtures of the tenant-boundary tests: fake internal services on 127.0.0.1 that answer
with secret-looking text, an SSH-style banner server, the guard policy of production (no
private endpoints), an SMTP sink. The helpers live in ``tests.support.attack``."""
from __future__ import annotations

import pytest

from providers import guard
from tests.support.attack import SECRET_BODY, BannerServer
from tests.support.servers import StubHttpServer


@pytest.fixture
def internal_service():
    """An "internal admin page" on loopback: every request is answered with the secret,
    as an AWS-style JSON error (so a careless client would quote it) with status 500."""
    def answer(request):
        return 500, {"x-amzn-ErrorType": "InternalFailure"}, {"__type": "InternalFailure", "message": SECRET_BODY,
                                                              "errors": [{"code": 7, "message": SECRET_BODY}]}

    with StubHttpServer(answer) as server:
        yield server


@pytest.fixture
def internal_page():
    """The same service answering 200 with a plain HTML page."""
    def answer(request):
        return 200, {"Content-Type": "text/html"}, f"<html><body><h1>{SECRET_BODY}</h1></body></html>"

    with StubHttpServer(answer) as server:
        yield server


@pytest.fixture
def ssh_banner():
    with BannerServer() as server:
        yield server


@pytest.fixture
def production_guard(app):
    """The guard as production runs it: private endpoints refused. Restored after."""
    before = guard.policy()
    guard.configure(allow_private=False, production=True, allowed_hosts=())
    yield
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)
