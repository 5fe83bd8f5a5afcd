"""The endpoint guard: refused address kinds, URL rules, allow-private."""
from __future__ import annotations

import socket
import threading

import pytest

from providers import guard


@pytest.fixture(autouse=True)
def restore_policy():
    before = guard.policy()
    yield
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)


@pytest.mark.parametrize("host,rule", [("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"),
                                       ("192.168.0.9", "private"), ("169.254.169.254", "metadata"),
                                       ("169.254.3.3", "link-local"), ("0.0.0.0", "unspecified"),
                                       ("::ffff:127.0.0.1", "loopback"), ("localhost", "loopback")])
def test_private_kinds_refused_with_their_rule(host, rule):
    guard.configure(allow_private=False, production=False)
    with pytest.raises(guard.EndpointRefused) as info:
        guard.resolve(host, 25)
    assert info.value.rule == rule
    assert rule in str(info.value)


def test_allow_private_lets_loopback_through_but_never_metadata():
    guard.configure(allow_private=True, production=False)
    assert guard.resolve("127.0.0.1", 25) == ["127.0.0.1"]
    with pytest.raises(guard.EndpointRefused) as info:
        guard.resolve("169.254.169.254", 80)
    assert info.value.rule == "metadata"


def test_public_literal_passes():
    guard.configure(allow_private=False, production=True)
    assert guard.resolve("8.8.8.8", 53) == ["8.8.8.8"]


def test_url_rules():
    guard.configure(allow_private=False, production=True)
    for url, rule in [("ftp://x.amazonaws.com", "scheme"), ("http://sqs.eu-west-1.amazonaws.com", "scheme"),
                      ("https://u:p@8.8.8.8/", "credentials"), ("https://evil.example/", "not-allowed-host"),
                      ("https://[::1]:9/", "not-allowed-host"), ("https://", "scheme")]:
        with pytest.raises(guard.EndpointRefused) as info:
            guard.check_url(url, "aws")
        assert info.value.rule == rule, url
    guard.configure(allow_private=False, production=True, allowed_hosts=["8.8.8.8"])
    assert guard.check_url("https://8.8.8.8/x", "aws") == "https://8.8.8.8/x"
    assert guard.host_allowed_for("email.eu-west-1.amazonaws.com", "aws")
    assert not guard.host_allowed_for("amazonaws.com.evil.example", "aws")
    assert guard.host_allowed_for("x.workers.dev", "cloudflare")


def test_connect_goes_to_the_checked_address():
    guard.configure(allow_private=True, production=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    with guard.connect("127.0.0.1", port, timeout=2) as sock:
        assert sock.getpeername() == ("127.0.0.1", port)
    thread.join(2)
    accepted[0].close()
    server.close()
    guard.configure(allow_private=False, production=False)
    with pytest.raises(guard.EndpointRefused):
        guard.connect("127.0.0.1", port, timeout=2)
