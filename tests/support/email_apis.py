"""Local stand-ins for SendGrid's and Mailgun's send APIs (no emulator of either is packaged).

Each follows the published API closely enough to hold the providers to it:
the auth header, the request shape and its limits, the answers (202 with
``X-Message-Id``; 200 with an ``id``), per-field 400s, and scripted answers
(429 with ``Retry-After``, 5xx). Accepted requests are "delivered" the way
the real service would: one message per recipient, with that recipient's
substitutions or recipient variables applied, kept in ``delivered``.
"""
from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import json
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from tests.support.servers import StubHttpServer, StubRequest

VALID = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class Delivered:
    to: str
    subject: str
    text: str | None
    html: str | None
    headers: dict = field(default_factory=dict)
    message_id: str = ""
    attachments: list = field(default_factory=list)
    #: the MIME as posted (Mailgun's messages.mime)
    raw: bytes | None = None


class _Fake:
    def __init__(self):
        self.delivered: list[Delivered] = []
        self.problems: list[str] = []
        #: answers to give, in order, before the normal ones: (status, headers, body)
        self.scripted: list[tuple] = []
        self.server = StubHttpServer(self.respond)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[StubRequest]:
        return self.server.requests

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()

    def respond(self, request: StubRequest):
        raise NotImplementedError


class FakeSendgrid(_Fake):
    """``POST /v3/mail/send`` and ``GET /v3/scopes`` of SendGrid's v3 API."""

    def __init__(self, api_key: str, scopes: tuple[str, ...] = ("mail.send", "scopes.read")):
        super().__init__()
        self.api_key, self.scopes = api_key, list(scopes)

    def respond(self, request: StubRequest):
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {}, {"errors": [{"field": None, "message": "The provided authorization grant is invalid, "
                                                                  "expired, or revoked"}]}
        if request.method == "GET" and request.path == "/v3/scopes":
            return 200, {}, {"scopes": self.scopes}
        if request.method != "POST" or request.path != "/v3/mail/send":
            return 404, {}, {"errors": [{"field": None, "message": "not found"}]}
        if self.scripted:
            return self.scripted.pop(0)
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return 415, {}, {"errors": [{"field": None, "message": "Content-Type should be application/json."}]}
        body = request.json()
        errors = self._check(body)
        if errors:
            return 400, {}, {"errors": errors}
        message_id = secrets.token_urlsafe(16)
        for item in body["personalizations"]:
            self.delivered.append(self._render(body, item, message_id))
        return 202, {"X-Message-Id": message_id}, b""

    def _check(self, body: dict) -> list[dict]:
        errors = []
        people = body.get("personalizations")
        if not isinstance(people, list) or not people:
            return [{"field": "personalizations", "message": "You must have at least one personalization."}]
        if len(people) > 1000:
            return [{"field": "personalizations", "message": "The personalization block is limited to 1000."}]
        seen = set()
        for n, item in enumerate(people):
            for m, to in enumerate(item.get("to") or []):
                address = str(to.get("email", ""))
                if not VALID.match(address):
                    errors.append({"field": f"personalizations.{n}.to.{m}.email",
                                   "message": "Does not contain a valid address."})
                if address.lower() in seen:
                    errors.append({"field": f"personalizations.{n}.to.{m}.email",
                                   "message": "Each unique email address should only be included once."})
                seen.add(address.lower())
            subs = item.get("substitutions") or {}
            if sum(len(k.encode()) + len(str(v).encode()) for k, v in subs.items()) > 10_000:
                errors.append({"field": f"personalizations.{n}.substitutions",
                               "message": "The total size of substitutions may not exceed 10,000 bytes."})
            if not item.get("subject") and not body.get("subject"):
                errors.append({"field": "subject", "message": "The subject is required."})
        if not VALID.match(str((body.get("from") or {}).get("email", ""))):
            errors.append({"field": "from.email", "message": "The from email does not contain a valid address."})
        content = body.get("content") or []
        if not content or any(not c.get("value") for c in content):
            errors.append({"field": "content", "message": "The content value must be at least one character."})
        if [c.get("type") for c in content][:1] == ["text/html"] and len(content) > 1:
            errors.append({"field": "content", "message": "text/plain must come first."})
        return errors

    @staticmethod
    def _render(body: dict, item: dict, message_id: str) -> Delivered:
        def sub(text):
            if text is None:
                return None
            for tag, value in (item.get("substitutions") or {}).items():
                text = text.replace(tag, value)
            return text
        parts = {c["type"]: c["value"] for c in body["content"]}
        return Delivered(to=item["to"][0]["email"], subject=sub(item.get("subject") or body.get("subject")),
                         text=sub(parts.get("text/plain")), html=sub(parts.get("text/html")),
                         headers={**(body.get("headers") or {}), **(item.get("headers") or {})},
                         message_id=message_id, attachments=body.get("attachments") or [])


class FakeMailgun(_Fake):
    """``POST /v3/<domain>/messages``, ``POST /v3/<domain>/messages.mime`` and ``GET /v3/domains/<domain>``
    of Mailgun's API."""

    def __init__(self, api_key: str, domain: str, state: str = "active"):
        super().__init__()
        self.api_key, self.domain, self.state = api_key, domain, state

    def respond(self, request: StubRequest):
        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return 401, {}, "Forbidden"
        if request.method == "GET" and request.path.startswith("/v3/domains/"):
            name = request.path.rsplit("/", 1)[1]
            if name != self.domain:
                return 404, {}, {"message": "Domain not found"}
            return 200, {}, {"domain": {"name": name, "state": self.state, "type": "custom"},
                             "receiving_dns_records": [], "sending_dns_records": []}
        if request.method != "POST" or not request.path.endswith(("/messages", "/messages.mime")):
            return 404, {}, {"message": "not found"}
        if request.path not in (f"/v3/{self.domain}/messages", f"/v3/{self.domain}/messages.mime"):
            return 404, {}, {"message": "Domain not found"}
        if self.scripted:
            return self.scripted.pop(0)
        if request.path.endswith(".mime"):
            return self._mime(request)
        fields, files = self._form(request)
        tos = [v for k, v in fields if k == "to"]
        one = {k: v for k, v in fields}
        if not tos or any(not VALID.match(email.utils.parseaddr(t)[1]) for t in tos):
            return 400, {}, {"message": "'to' parameter is not a valid address. please check documentation"}
        if len(tos) > 1000:
            return 400, {}, {"message": "Too many recipients"}
        if not one.get("from") or not (one.get("text") or one.get("html")):
            return 400, {}, {"message": "Need at least one of 'text' or 'html' parameters specified"}
        variables = json.loads(one["recipient-variables"]) if "recipient-variables" in one else None
        message_id = f"{secrets.token_hex(8)}@{self.domain}"
        headers = {k[2:]: v for k, v in fields if k.startswith("h:")}
        if variables is None:  # without recipient variables every recipient sees all of them
            self.delivered += [Delivered(", ".join(tos), one.get("subject", ""), one.get("text"), one.get("html"),
                                         headers, message_id, files) for _ in tos]
        else:
            for to in tos:
                mine = variables.get(email.utils.parseaddr(to)[1], {})

                def sub(text, mine=mine):
                    if text is None:
                        return None
                    return re.sub(r"%recipient\.([A-Za-z0-9_]+)%", lambda m: str(mine.get(m.group(1), "")), text)
                self.delivered.append(Delivered(to, sub(one.get("subject", "")), sub(one.get("text")),
                                                sub(one.get("html")), headers, message_id, files))
        return 200, {}, {"id": f"<{message_id}>", "message": "Queued. Thank you."}

    def _mime(self, request: StubRequest):
        """``messages.mime``: ``to`` and the ``message`` file (multipart only), sent as it is."""
        if not request.headers.get("Content-Type", "").startswith("multipart/form-data"):
            return 400, {}, {"message": "messages.mime takes multipart/form-data"}
        fields = self._multipart(request)
        tos = [v.decode() for k, v in fields if k == "to"]
        raw = next((v for k, v in fields if k == "message"), None)
        if not tos or any(not VALID.match(email.utils.parseaddr(t)[1]) for t in tos) or raw is None:
            return 400, {}, {"message": "'to' and 'message' are required"}
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        message_id = f"{secrets.token_hex(8)}@{self.domain}"
        for to in tos:
            body = parsed.get_body(preferencelist=("plain",))
            self.delivered.append(Delivered(to, str(parsed.get("Subject", "")), body.get_content() if body else None,
                                            None, {}, message_id, [], raw=raw))
        return 200, {}, {"id": f"<{message_id}>", "message": "Queued. Thank you."}

    @staticmethod
    def _multipart(request: StubRequest) -> list[tuple[str, bytes]]:
        """(name, bytes) of each form part, split on the boundary byte for byte."""
        boundary = re.search(r'boundary="?([^";]+)"?', request.headers.get("Content-Type", "")).group(1).encode()
        found = []
        for chunk in request.body.split(b"--" + boundary)[1:-1]:
            head, _, content = chunk[2:].partition(b"\r\n\r\n")
            name = re.search(rb'name="([^"]*)"', head).group(1).decode()
            found.append((name, content[:-2]))  # the CRLF before the next boundary is the delimiter's
        return found

    @staticmethod
    def _form(request: StubRequest) -> tuple[list[tuple[str, str]], list]:
        kind = request.headers.get("Content-Type", "")
        if kind.startswith("application/x-www-form-urlencoded"):
            return parse_qsl(request.body.decode(), keep_blank_values=True), []
        if kind.startswith("multipart/form-data"):
            parsed = email.message_from_bytes(f"Content-Type: {kind}\r\n\r\n".encode() + request.body,
                                              policy=email.policy.HTTP)
            fields, files = [], []
            for part in parsed.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if part.get_filename():
                    files.append((part.get_filename(), part.get_payload(decode=True)))
                else:
                    fields.append((name, part.get_content()))
            return fields, files
        return [], []
