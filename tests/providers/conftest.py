"""Fixtures for the provider tests: real servers, a TLS certificate, provider factories."""
from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from providers.ses import SesProvider
from tests.support.servers import StubHttpServer

AWS_CREDS = {"aws_access_key": "AKIDTESTKEY", "aws_secret_key": "test-secret-do-not-log",
             "aws_region": "us-east-1"}


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1/localhost and its key, as PEM files."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def _self_signed(directory: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offload-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away certificate the SMTP servers present and the clients trust."""
    return _self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def make_ses(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SesProvider]]:
    """Build SesProviders against an endpoint; each is closed after the test."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SESV2", "AWS_ENDPOINT_URL_STS", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    made: list[SesProvider] = []

    def make(endpoint: str, **extra: object) -> SesProvider:
        provider = SesProvider({**AWS_CREDS, "aws_endpoint_url": endpoint, **extra})
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


@pytest.fixture
def stub_http() -> Iterator[Callable[[Callable], StubHttpServer]]:
    """Start scripted HTTP servers: ``stub_http(responder)``; stopped after the test."""
    servers: list[StubHttpServer] = []

    def start(responder: Callable) -> StubHttpServer:
        server = StubHttpServer(responder).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
