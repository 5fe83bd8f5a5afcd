"""Rendering subjects and bodies from templates with per-recipient data.

Jinja2's sandbox: templates come from company users and cannot reach
Python internals. HTML bodies are autoescaped; subjects are single-line
(CR, LF and NUL become spaces) so no value can inject a header.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

_text_env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_html_env = SandboxedEnvironment(autoescape=True, keep_trailing_newline=True)
_HEADER_BREAKS = re.compile(r"[\r\n\x00]+")


class RenderError(ValueError):
    """A template does not compile or cannot render; ``part`` names which one."""

    def __init__(self, part: str, message: str):
        super().__init__(f"{part}: {message}")
        self.part = part


def single_line(value: str) -> str:
    """Collapse CR/LF/NUL runs to a space: safe for a header value."""
    return _HEADER_BREAKS.sub(" ", value).strip()


def has_header_breaks(value: str) -> bool:
    return bool(_HEADER_BREAKS.search(value))


@dataclass
class Rendered:
    subject: str
    text: str | None
    html: str | None


@lru_cache(maxsize=512)
def _compiled(env, source: str):
    """Compiling is the costly part of rendering; jobs reuse a few templates."""
    return env.from_string(source)


class CompiledTemplate:
    """Subject, text and HTML compiled once, rendered per recipient."""

    def __init__(self, subject: str, text: str | None, html: str | None):
        if not (subject or "").strip():
            raise RenderError("subject", "a subject is required")
        if not (text or html):
            raise RenderError("body", "body_text or body_html is required")
        self._subject = self._compile(_text_env, "subject", subject)
        self._text = self._compile(_text_env, "body_text", text) if text else None
        self._html = self._compile(_html_env, "body_html", html) if html else None

    @staticmethod
    def _compile(env, part, source):
        try:
            return _compiled(env, source)
        except TemplateError as exc:
            raise RenderError(part, f"template error: {exc}") from None

    def render(self, data: dict | None) -> Rendered:
        """Render for one recipient; raises ``RenderError`` on a runtime template error."""
        ctx = data or {}
        try:
            subject = single_line(self._subject.render(ctx))
            text = self._text.render(ctx) if self._text else None
            html = self._html.render(ctx) if self._html else None
        except TemplateError as exc:
            raise RenderError("template", str(exc)) from None
        except Exception as exc:  # sandbox/operator errors inside user templates
            raise RenderError("template", f"{type(exc).__name__}: {exc}") from None
        return Rendered(subject, text, html)


# Fast address check for bulk input: RFC 5321 lengths, one @, a dotted domain.
_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def valid_email(address) -> bool:
    """True for a plausible deliverable address (no display names, no CR/LF)."""
    return isinstance(address, str) and len(address) <= 254 and bool(_EMAIL_RE.match(address)) \
        and len(address.partition("@")[0]) <= 64
