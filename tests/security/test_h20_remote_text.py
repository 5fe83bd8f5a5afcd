"""Issue 26, Low 7: remote text is never shown.

The review saw the SMTP test list the server's EHLO lines verbatim, an AWS
error code shown as the endpoint wrote it, and, in offload mode, the Lambda's
callback carry SES's own text (``MESSAGE_REJECTED: Address blacklisted.``),
stored as the recipient's error where direct mode stores a fixed phrase. Now
the SMTP test names only the extensions it knows, error codes are reduced to
letters, digits and ``_.-`` (64 at most), the cloud workers send codes
(tests/cloud_workers: the Lambda's ``MessageRejected``, the Worker's binding
code), and the service words a callback's code as direct mode does, keeping
nothing of an older worker's text.
"""
from __future__ import annotations

import json
import re
import socket
import threading

from sqlalchemy import select

from core.db import db
from core.models import Recipient
from providers import ses
from providers.base import Message, ProviderError, get_provider, safe_code
from tests.dashboard.test_callbacks import offload_company, payload, post, sent, signed, submitted_job
from tests.support.attack import SECRET_BODY, SSH_BANNER, connection_test, leaks, login_as
from tests.support.servers import StubHttpServer


class ChattySmtp:
    """An SMTP server whose greeting and EHLO lines carry an internal host's secrets."""

    EHLO = ["internal-bastion-7 greets you", f"X-INTERNAL {SECRET_BODY}", "AUTH PLAIN LOGIN s3cr3t-mech",
            f"SIZE 1000 {SSH_BANNER}", "8BITMIME", "PIPELINING"]

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(f"220 {SSH_BANNER} ESMTP\r\n".encode())
                f.flush()
                for line in f:
                    verb = line.decode(errors="replace").strip().upper()
                    if verb.startswith(("EHLO", "HELO")):
                        lines = self.EHLO
                        f.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}\r\n"
                                        for i, t in enumerate(lines)).encode())
                    elif verb.startswith("QUIT"):
                        f.write(b"221 bye\r\n")
                        f.flush()
                        break
                    else:
                        f.write(b"250 ok\r\n")
                    f.flush()

    def close(self):
        self.sock.close()


def test_the_smtp_test_shows_no_ehlo_line(app, client, make_company, make_user):
    server = ChattySmtp()
    try:
        company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                               smtp_port=str(server.port), smtp_tls="none")
        login_as(client, make_user, "mgr@acme.test", company_id=company.id)
        result = connection_test(app, client, company.id)
    finally:
        server.close()
    text = json.dumps(result)
    assert result["ok"] is True, text
    assert not leaks(text) and "s3cr3t" not in text and "greets" not in text
    [check] = [c for c in result["checks"] if "features" in c["facts"]]
    assert check["facts"]["features"] == {"auth": "PLAIN LOGIN", "size": "", "8bitmime": "", "pipelining": ""}


def ses_reason(url: str) -> str:
    """What a tenant's SES send against ``url`` reports."""
    provider = get_provider("ses", {"aws_access_key": "AKIATENANT0000000001", "aws_secret_key": "s",
                                    "aws_region": "us-east-1", "aws_endpoint_url": url})
    try:
        results = provider.send("noreply@acme.test", [Message(key=1, to="ann@acme.test", subject="Hi",
                                                              text="Hello")])
    except ProviderError as exc:
        return exc.reason
    return " ".join(r.error or "" for r in results)


def test_an_aws_error_code_is_reduced_to_plain_characters():
    """A tenant's endpoint answers an AWS-style error whose code is markup and an internal secret."""
    code = "<script>alert(1)</script> INTERNAL-ADMIN root:s3cr3t " + "x" * 200
    with StubHttpServer(lambda request: (400, {"x-amzn-ErrorType": code}, {"message": SECRET_BODY})) as stub:
        reason = ses_reason(stub.url)
    assert stub.requests and reason.startswith("SES error (HTTP 400): ")  # a code SES does not have: not shown
    assert "<" not in reason and "alert" not in reason and "s3cr3t" not in reason and not leaks(reason)
    # and what is shown of any code is plain characters, 64 at most
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", safe_code(code))


def test_a_callbacks_remote_text_is_stored_in_direct_modes_words(client, make_company):
    """An older Lambda's result: SES's code and SES's text. The recipient gets what direct mode
    stores for that code (``providers.ses``), and none of the text."""
    acme = offload_company(make_company, "Acme")
    job, _ = submitted_job(acme, n=4, batch_size=4)
    body = payload(job, 1, sent("user0@acme.test") + [
        {"email": "user1@acme.test", "status": "failed",
         "error": f"MESSAGE_REJECTED: Address blacklisted. {SECRET_BODY}"},
        {"email": "user2@acme.test", "status": "failed", "error": "MessageRejected"},  # a current Lambda's
        {"email": "user3@acme.test", "status": "failed", "error": "<b>Évil</b> text with no code"}])
    assert post(client, acme.id, body, signed(acme.secret, body)).status_code == 200
    errors = dict(db.session.execute(select(Recipient.email, Recipient.error)).all())
    direct = ses.code_reason("MESSAGE_REJECTED")  # what direct mode stores for that entry status
    assert errors["user1@acme.test"] == direct and "blacklisted" not in direct
    assert errors["user2@acme.test"] == ses.code_reason("MessageRejected")
    assert "<" not in errors["user3@acme.test"] and "Évil" not in errors["user3@acme.test"]
    assert not leaks(json.dumps(errors))
