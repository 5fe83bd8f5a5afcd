"""Fixtures for SMTP submission: the server in this process, a company that may send as acme.test."""
from __future__ import annotations

import datetime
import smtplib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@pytest.fixture
def smtp_company(make_company):
    """A company whose sender is at acme.test (its SMTP user name is its id, its password the API token)."""
    return make_company("Acme Learning", sender="noreply@acme.test", provider="smtp")


@pytest.fixture
def signed_in(smtp_server, smtp_company):
    """An smtplib session signed in as ``smtp_company`` over loopback (no TLS needed there)."""
    server = smtp_server()
    clients = []

    def connect() -> smtplib.SMTP:
        client = smtplib.SMTP(server.host, server.port, timeout=30)
        client.login(str(smtp_company.id), smtp_company.token)
        clients.append(client)
        return client

    connect.server = server
    yield connect
    for client in clients:
        try:
            client.quit()
        except smtplib.SMTPException:
            client.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate and key for 127.0.0.1 / localhost (PEM files)."""
    folder = tmp_path_factory.mktemp("smtp-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
