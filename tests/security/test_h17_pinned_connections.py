"""Issue 26, Medium 3: DNS rebinding, and connection errors as a port scanner.

The review's name answered a public address to the endpoint guard, then
127.0.0.1 to botocore, which connected to a loopback-only listener. Every
HTTP client built from tenant input now connects through ``providers.pinning``:
the connection resolves through the guard and goes only to an address it
approved, so the second answer is refused before any socket reaches it. And a
closed port, a port that hangs up and a port that speaks another protocol all
give the tenant the same words.
"""
from __future__ import annotations

import socket

import pytest

from providers import guard, pinning, registry
from providers.base import Message, ProviderError, get_provider
from providers.cloudflare import CloudflareEmailProvider
from providers.mailgun import MailgunProvider
from providers.offload import get_transport
from providers.sendgrid import SendgridProvider
from providers.storage import S3Storage, WorkerR2Storage
from tests.support.attack import BannerServer
from tests.support.servers import free_port

NAME = "rebind.example"
PUBLIC = "93.184.215.14"  # a public address: the guard approves it
KEYS = {"aws_access_key": "AKIATENANT0000000001", "aws_secret_key": "tenant-secret", "aws_region": "us-east-1"}
SENDER = "noreply@acme.test"


def message() -> Message:
    return Message(key=1, to="ann@acme.test", subject="Hi", text="Hello")


class RebindingResolver:
    """DNS for ``NAME`` that answers the public address to the guard's check and 127.0.0.1 to every
    later lookup (what the connection asks); other names resolve as usual."""

    def __init__(self, monkeypatch):
        self.real = socket.getaddrinfo
        self.checking = False
        self.answers: list[str] = []
        real_check = guard.check_url

        def check_url(url, cloud):
            self.checking = True
            try:
                return real_check(url, cloud)
            finally:
                self.checking = False

        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)
        monkeypatch.setattr(guard, "check_url", check_url)

    def getaddrinfo(self, host, port, *args, **kwargs):
        if str(host).rstrip(".").lower() != NAME:
            return self.real(host, port, *args, **kwargs)
        address = PUBLIC if self.checking else "127.0.0.1"
        self.answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]


@pytest.fixture
def listed_name():
    """Production's guard, with the rebinding name on the operator's list (as the review had it)."""
    before = guard.policy()
    guard.configure(allow_private=False, production=True, allowed_hosts=(NAME,))
    yield
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)
    registry.configure(api_bases={})


def clients(base: str) -> dict:
    """Each outbound client a tenant (or the operator's API base) aims, doing its first call."""
    def api_base(name, provider_class, config):
        def call():
            registry.configure(api_bases={name: base})
            with provider_class(config) as provider:
                return provider.send(SENDER, [message()])
        return call

    return {
        "ses": lambda: get_provider("ses", {**KEYS, "aws_endpoint_url": base}).send(SENDER, [message()]),
        "sqs": lambda: get_transport("sqs", {**KEYS, "aws_endpoint_url": base,
                                             "sqs_queue_url": f"{base}/123456789012/q"}).submit([("b1", {"a": 1})]),
        "s3": lambda: S3Storage({**KEYS, "aws_endpoint_url": base, "s3_bucket": "certs"}).put(
            "company-1/x.pdf", b"%PDF", "application/pdf"),
        "sendgrid": api_base("sendgrid", SendgridProvider, {"sendgrid_api_key": "SG.key"}),
        "mailgun": api_base("mailgun", MailgunProvider, {"mailgun_api_key": "key", "mailgun_domain": "mg.acme.test"}),
        "cloudflare": lambda: CloudflareEmailProvider({"cloudflare_api_token": "t", "cloudflare_account_id": "a" * 32,
                                                  "cloudflare_api_base": f"{base}/client/v4"}).send(
            SENDER, [message()]),
        "cloudflare_queue": lambda: get_transport("cloudflare_queue", {
            "cloudflare_api_token": "t", "cloudflare_account_id": "a" * 32, "cloudflare_queue_id": "q",
            "cloudflare_api_base": f"{base}/client/v4"}).submit([("b1", {"a": 1})]),
        "https_offload": lambda: get_transport("https", {"offload_url": f"{base}/batches", "callback_secret":
                                                         "whsec_" + "A" * 43}).submit([("b1", {"a": 1})]),
        "worker_r2": lambda: WorkerR2Storage({"worker_url": base, "signing_secret": "s" * 32}).put(
            "company-1/x.pdf", b"%PDF", "application/pdf"),
    }


def outcome(call) -> str:
    """What the call's caller learns: the error's reason, or the results' errors."""
    try:
        results = call()
    except ProviderError as exc:
        return exc.reason
    return " ".join(str(getattr(r, "error", "") or "") for r in (results or []))


@pytest.mark.parametrize("name", sorted(clients("https://x")))
def test_a_rebinding_name_never_reaches_a_loopback_listener(listed_name, monkeypatch, name):
    resolver = RebindingResolver(monkeypatch)
    with BannerServer() as loopback_only:
        said = outcome(clients(f"https://{NAME}:{loopback_only.port}")[name])
        assert loopback_only.connections == 0, f"{name} connected to 127.0.0.1 after the guard approved {PUBLIC}"
    assert PUBLIC in resolver.answers and "127.0.0.1" in resolver.answers  # both answers were given
    assert pinning.UNREACHABLE in said, said


class HangUp:
    """A port that accepts and closes at once."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        import threading
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("name", ["ses", "sqs", "s3", "sendgrid", "cloudflare", "https_offload", "worker_r2"])
def test_closed_and_open_ports_give_the_same_words(open_private, name):
    """Private endpoints allowed (the suite's emulators): a closed port, a port that hangs up and an SSH
    banner answer the same reason, so the errors map no port."""
    hang_up = HangUp()
    try:
        with BannerServer() as banner:
            said = {kind: outcome(clients(f"http://127.0.0.1:{port}")[name])
                    for kind, port in (("closed", free_port()), ("hangs up", hang_up.port), ("ssh", banner.port))}
    finally:
        hang_up.close()
        registry.configure(api_bases={})
    assert len(set(said.values())) == 1, said
    assert pinning.UNREACHABLE in said["closed"] and "SSH" not in said["ssh"]


@pytest.fixture
def open_private():
    before = guard.policy()
    guard.configure(allow_private=True, production=False)
    yield
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)
