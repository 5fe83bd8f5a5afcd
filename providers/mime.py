"""A MIME message as bytes, changed only where it must be: header fields out or in, never re-serialised.

SMTP submission delivers what the LMS wrote (``Message.raw``): the body,
its parts and attachments byte for byte. The header block is read field by
field (a field is its first line and the folded lines after it) and fields
are removed or added as whole lines, so every other byte, a DKIM signature
over them included, stays as it was. ``parsed`` reads the message with the
standard library's parser for the one provider that cannot take MIME
(SendGrid's API takes parts).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import getaddresses

_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_LINE = re.compile(rb".*?(?:\r\n|\n|$)", re.S)


#: fields a mailbox provider reads as they are written (RFC 2369, RFC 8058): never folded, never encoded
VERBATIM = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


class _Verbatim(EmailPolicy):
    """The email package's policy, except that the ``VERBATIM`` fields are written as given. The
    standard policy folds a line over 78 characters, and a URI with no space to fold at becomes
    RFC 2047 encoded words (``=?utf-8?q?=3Chttps...?=``), which no provider reads as a link: no
    one-click unsubscribe. Such a value is ASCII on one line (the service writes it), and a line
    may have 998 characters (RFC 5322 2.1.1)."""

    def _as_is(self, name: str, value) -> bool:
        text = str(value)
        return name.lower() in VERBATIM and text.isascii() and not any(c in text for c in "\r\n\0") \
            and len(name) + 2 + len(text) <= 998

    def fold(self, name, value):
        if self._as_is(name, value):
            return f"{name}: {value}{self.linesep}"
        return super().fold(name, value)

    def fold_binary(self, name, value):
        if self._as_is(name, value):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


#: ``email.policy.SMTP`` with List-Unsubscribe and List-Unsubscribe-Post written as they are
SMTP = _Verbatim(linesep="\r\n")


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header block with its last line break, the rest from the empty line on)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            cut = at + len(sep) // 2
            return raw[:cut], raw[cut:]
    return raw, b""


def fields(head: bytes) -> list[tuple[str, bytes]]:
    """The header fields of ``head``: (lower-case name, the field's bytes, folded lines included).

    A line that is neither a field nor a continuation (garbage) is kept with
    the name ``""``, so removing fields never loses other bytes."""
    found: list[tuple[str, bytes]] = []
    for line in _LINE.findall(head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and found:
            name, text = found[-1]
            found[-1] = (name, text + line)
            continue
        match = _NAME.match(line)
        found.append((match.group(1).decode("ascii").lower() if match else "", line))
    return found


def value(field: bytes) -> str:
    """A field's value, unfolded, as text (undecoded bytes kept as surrogates)."""
    text = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(r"\r?\n[ \t]", " ", text.decode("utf-8", "surrogateescape")).strip()


def header_values(raw: bytes, name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive)."""
    wanted = name.lower()
    return [value(text) for key, text in fields(split(raw)[0]) if key == wanted]


def without(raw: bytes, names: Iterable[str]) -> bytes:
    """``raw`` with every field named in ``names`` removed (case-insensitive); all else untouched."""
    drop = {n.lower() for n in names}
    head, rest = split(raw)
    kept = [text for key, text in fields(head) if key not in drop]
    return b"".join(kept) + rest


def line_break(raw: bytes) -> bytes:
    """The message's own line break (CRLF unless it uses bare LF)."""
    head = split(raw)[0]
    return b"\n" if b"\n" in head and b"\r\n" not in head else b"\r\n"


def with_headers(raw: bytes, headers: Mapping[str, str], *, replace: bool = False) -> bytes:
    """``raw`` with ``headers`` added at the top of its header block; with ``replace``, fields
    of the same names go first. Names and values must already be safe (no CR, LF or NUL)."""
    if not headers:
        return raw
    for name, text in headers.items():
        if not _NAME.match(name.encode("ascii", "replace") + b":") or any(c in text for c in "\r\n\0"):
            raise ValueError("unsafe header")
    if replace:
        raw = without(raw, headers)
    eol = line_break(raw)
    added = b"".join(f"{name}: {_encoded(text)}".encode("ascii") + eol for name, text in headers.items())
    return added + raw


def _encoded(text: str) -> str:
    if text.isascii():
        return text
    return make_header([(text.encode("utf-8"), "utf-8")]).encode()


def decoded(text: str) -> str:
    """A header value with its RFC 2047 encoded words decoded, on one line."""
    if "=?" not in text and text.isascii():
        return text.strip()
    try:
        shown = str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        shown = text
    shown = shown.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return re.sub(r"[\r\n\0]+", " ", shown).strip()


#: one mailbox, the common case: ``name <addr>``, ``"quoted, (name)" <addr>`` or a bare ``addr``
_ONE = re.compile(r'\s*(?:(?:"(?:[^"\\\r\n]|\\.)*"|[^",;:<>()\\"@\r\n]+)\s*)?<([^<>\s@]+@[^<>\s@]+)>\s*'
                  r'|\s*([^<>\s@",;:()\\]+@[^<>\s@",;:()\\]+)\s*')


def addresses(text: str) -> list[str]:
    """The addr-specs of an address-list header value (``From:``, ``To:``)."""
    one = _ONE.fullmatch(text)
    if one:
        return [one.group(1) or one.group(2)]
    return [addr for _name, addr in getaddresses([text]) if addr]


def parsed(raw: bytes) -> EmailMessage:
    """The whole message, parsed (for providers that take parts, not MIME)."""
    return BytesParser(policy=policy.default).parsebytes(raw)


def outgoing(raw: bytes, headers: Mapping[str, str]) -> bytes:
    """What a provider sends for a ``Message.raw``: the stored bytes with the service's per-recipient
    headers (List-Unsubscribe of bulk mail) on top, replacing fields of the same names."""
    return with_headers(raw, headers, replace=True) if headers else raw


# -- rebuilt from the parts (for APIs that take parts, not MIME) ------------------------------------

@dataclass
class Part:
    filename: str
    content: bytes
    content_type: str
    content_id: str | None = None


@dataclass
class Parts:
    """A MIME message read into what a parts API takes."""

    sender: str
    subject: str
    text: str | None
    html: str | None
    reply_to: str | None = None
    cc: list[str] = field(default_factory=list)
    #: header fields beyond the structural ones, as written (name, value)
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[Part] = field(default_factory=list)
    inline: list[Part] = field(default_factory=list)


#: fields a parts API writes itself from the parts, or that describe the MIME structure
STRUCTURAL = frozenset({"from", "to", "cc", "bcc", "subject", "reply-to", "date", "mime-version", "content-type",
                        "content-transfer-encoding", "content-disposition", "content-id", "received", "return-path",
                        "dkim-signature", "sender", "message-id"})


def parts(raw: bytes) -> Parts:
    """The first text/plain and text/html bodies, the attachments and inline parts, and the other
    header fields of ``raw``."""
    msg = parsed(raw)
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    found = Parts(sender=str(msg.get("From", "")), subject=decoded(str(msg.get("Subject", ""))),
                  text=text_part.get_content() if text_part is not None else None,
                  html=html_part.get_content() if html_part is not None else None,
                  reply_to=str(msg["Reply-To"]) if msg["Reply-To"] else None,
                  cc=addresses(str(msg.get("Cc", ""))))
    for key, text in fields(split(raw)[0]):  # as written (encoded words stay encoded)
        name = text.split(b":", 1)[0].decode("ascii", "replace").strip()
        if key and key not in STRUCTURAL and name not in found.headers:
            found.headers[name] = value(text)
    bodies = {id(p) for p in (text_part, html_part) if p is not None}
    for part in msg.walk():
        if part.is_multipart() or id(part) in bodies:
            continue
        payload = part.get_payload(decode=True)  # a leaf's decoded bytes (None when it has none)
        payload = payload if isinstance(payload, bytes) else b""
        item = Part(part.get_filename() or "attachment", payload, part.get_content_type(),
                    (part.get("Content-ID") or "").strip("<> ") or None)
        if part.get_content_disposition() == "inline" and item.content_id:
            found.inline.append(item)
        else:
            found.attachments.append(item)
    return found
