"""Unsubscribe tokens for bulk and re-engagement mail (RFC 8058).

Only that mail carries one (``core.models.is_bulk``), and an unsubscribe
puts the address on the company's ``unsubscribe`` list, which stops bulk
mail only: password, account, licence and IOMAD's mail is transactional
and is never unsubscribed (``core.suppressions.lists_for``).

The token is an itsdangerous signature of ``[company_id, email]`` keyed by
its own signing keys, ``OFFLOAD_UNSUBSCRIBE_KEYS`` (newest first); when the
operator sets none, a key derived from each OFFLOAD_ENCRYPTION_KEYS key
(with its own salt) is used, which is secret wherever the encryption keys
are. It needs no database row, cannot be guessed, survives restarts and
keeps working through a key rotation while the old key is listed.

Bulk and re-engagement mail also shows the link: a footer at the end of the
text and of the HTML body (``with_footer``), which a company can restyle
(its settings ``unsubscribe_footer_text`` and ``unsubscribe_footer_html``:
small templates that use ``{{ unsubscribe_url }}``, checked when saved and
rendered with the mail, bounded like any template). Transactional mail has none.
"""
from __future__ import annotations

import hashlib
import hmac

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select

from core import settings
from core.db import db
from core.models import DeliverySettings
from core.rendering import CompiledTemplate, RenderError

SALT = "offload-unsubscribe"
_serializers: dict[tuple, URLSafeSerializer] = {}


def _serializer() -> URLSafeSerializer:
    own = settings.current().unsubscribe_keys
    keys = tuple(own or settings.current().encryption_keys)  # newest first
    found = _serializers.get(keys)
    if found is None:
        # itsdangerous wants oldest to newest; it signs with the last one
        secrets = [k.decode() if own else hmac.new(k, SALT.encode(), hashlib.sha256).hexdigest()
                   for k in reversed(keys)]
        found = _serializers[keys] = URLSafeSerializer(secrets, salt=SALT,
                                                         signer_kwargs={"digest_method": hashlib.sha256})
    return found


def make_token(company_id: int, email: str) -> str:
    return _serializer().dumps([int(company_id), email.strip().lower()])


def read_token(token: str) -> tuple[int, str] | None:
    """(company id, email) of a genuine token, else ``None``."""
    if len(token) > 1000:
        return None
    try:
        value = _serializer().loads(token)
    except BadSignature:
        return None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
            and isinstance(value[1], str)):
        return None
    return value[0], value[1]


def unsubscribe_url(company_id: int, email: str) -> str:
    return f"{settings.current().public_url}/u/{make_token(company_id, email)}"


# -- the footer ------------------------------------------------------------------------------------

#: the link's variable in a footer (the service adds it to each bulk recipient's data)
VARIABLE = "unsubscribe_url"
DEFAULT_FOOTER_TEXT = "--\nDon't want these emails? Unsubscribe: {{ unsubscribe_url }}"
DEFAULT_FOOTER_HTML = ('<p style="margin-top:24px;font-size:12px;color:#6b7280">Don\'t want these emails? '
                       '<a href="{{ unsubscribe_url }}" style="color:#6b7280">Unsubscribe</a>.</p>')
FOOTER_KEYS = {"text": "unsubscribe_footer_text", "html": "unsubscribe_footer_html"}
MAX_FOOTER = 2000


def check_footer(source: str, kind: str) -> str:
    """A company's footer template, checked: it compiles, shows ``{{ unsubscribe_url }}`` and uses
    nothing else (it is rendered with every recipient's mail); raises ``ValueError`` in words."""
    if len(source) > MAX_FOOTER:
        raise ValueError(f"at most {MAX_FOOTER} characters")
    try:
        compiled = CompiledTemplate("footer", source if kind == "text" else None, source if kind == "html" else None)
    except RenderError as exc:
        raise ValueError(exc.message) from None
    if VARIABLE not in compiled.variables:
        raise ValueError("must show the link: {{ unsubscribe_url }}")
    others = sorted(set(compiled.variables) - {VARIABLE})
    if others:
        raise ValueError(f"may use only {{{{ unsubscribe_url }}}}, not {', '.join(others)}")
    return source


def footers(company_id: int) -> tuple[str, str]:
    """The company's (text, HTML) footer templates: its own, else the defaults."""
    row = db.session.execute(select(DeliverySettings).where(DeliverySettings.company_id == company_id)) \
        .scalar_one_or_none()
    text = row.get_setting(FOOTER_KEYS["text"]) if row is not None else None
    html = row.get_setting(FOOTER_KEYS["html"]) if row is not None else None
    return text or DEFAULT_FOOTER_TEXT, html or DEFAULT_FOOTER_HTML


def with_footer(company_id: int, text: str | None, html: str | None) -> tuple[str | None, str | None]:
    """A bulk mail's text and HTML templates with the company's footer at the end of each (in HTML,
    before ``</body>`` when there is one)."""
    foot_text, foot_html = footers(company_id)
    if text:
        text = text.rstrip("\n") + "\n\n" + foot_text + "\n"
    if html:
        at = html.lower().rfind("</body>")
        html = html[:at] + foot_html + html[at:] if at >= 0 else html + foot_html
    return text, html
