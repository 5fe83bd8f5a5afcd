"""What a rendered page shows a person, read as a browser would: inline scripts
(which the CSP refuses) and raw keys (which a person should never read).

``inline_scripts(html)``: every ``<script>`` with a body, ``on*=`` handler and
``javascript:`` URL. ``raw_keys(html)``: the keys in the text a person sees
(text, option labels, titles, placeholders, button values), outside
``<code>``/``<pre>``/``<kbd>``/``<samp>`` (technical text on purpose: field
names, paths) and outside e-mail addresses, URLs and API token prefixes.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

from core.models.statuses import BatchStatus, JobStatus, RecipientStatus
from providers import registry

#: elements whose text a person does not read as prose (shown as code on purpose, or not shown)
SKIPPED = {"script", "style", "code", "pre", "kbd", "samp", "template", "textarea", "noscript"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
#: attributes a person reads
READ_ATTRS = ("title", "placeholder", "aria-label", "alt")
URL_ATTRS = ("href", "src", "action", "formaction", "data")
SNAKE = re.compile(r"(?<![\w@./:-])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![\w@]|\.\w|/)")
EXCEPTION = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)*(?:Error|Exception)\b")
#: e-mail addresses, URLs, file names and an API token's shown prefix (``mro_`` and random characters,
#: which may happen to look like snake_case)
EMAIL_OR_URL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\bhttps?://\S+|\b[\w-]+\.(?:csv|json|eml|zip|png|pdf)\b|\bmro_[\w-]+")
#: status words as stored (lower case): a badge or cell that is exactly one of them shows the key
STATUS_KEYS = {str(s) for enum in (JobStatus, RecipientStatus, BatchStatus) for s in enum}


def backend_names() -> set[str]:
    """Every backend's registry name and alias (``smtp``, ``ses``, ``aws``...): never an option's words."""
    return {n for kind in registry.KINDS for n in (*registry.names(kind), *registry.aliases(kind))}


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, is a badge)
        self.texts: list[tuple[str, str]] = []  # (where, text)
        self.scripts: list[str] = []
        self._script_src: bool | None = None
        self._script_body: list[str] = []
        self._option: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.scripts.append(f"<{tag} {name}=\"{(value or '')[:60]}\">")
            if name in URL_ATTRS and (value or "").strip().lower().startswith("javascript:"):
                self.scripts.append(f"<{tag} {name}=\"{value[:60]}\">")
        if tag == "script":
            kind = (values.get("type") or "text/javascript").lower()
            self._script_src = bool(values.get("src")) or kind not in ("text/javascript", "module",
                                                                       "application/javascript")
            self._script_body = []
        if not self._skipping():
            for name in READ_ATTRS:
                if values.get(name):
                    self.texts.append((f"{tag}[{name}]", values[name]))
            if tag == "input" and values.get("type") in ("submit", "button") and values.get("value"):
                self.texts.append((f"{tag}[value]", values["value"]))
        if tag == "option":
            self._option = []
        if tag not in VOID:
            self.stack.append((tag, "badge" in (values.get("class") or "").split()))

    def handle_endtag(self, tag):
        if tag == "script" and self._script_src is False and "".join(self._script_body).strip():
            self.scripts.append("<script>" + "".join(self._script_body).strip()[:80])
        if tag == "script":
            self._script_src = None
        if tag == "option" and self._option is not None:
            self.texts.append(("option", "".join(self._option).strip()))
            self._option = None
        if any(t == tag for t, _ in self.stack):
            while self.stack and self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self._script_src is not None:
            self._script_body.append(data)
            return
        if self._skipping():
            return
        if self._option is not None:
            self._option.append(data)
            return
        if data.strip():
            self.texts.append(("badge" if self._badge_open() else "text", data.strip()))

    def _skipping(self) -> bool:
        return any(t in SKIPPED for t, _ in self.stack)

    def _badge_open(self) -> bool:
        return bool(self.stack) and self.stack[-1][1]


def read(html: str) -> _Reader:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader


def inline_scripts(html: str) -> list[str]:
    """Inline ``<script>`` bodies, ``on*=`` handlers and ``javascript:`` URLs in ``html``."""
    return read(html).scripts


def raw_keys(html: str) -> list[str]:
    """Keys a person would read in ``html``: snake_case keys, exception names, a backend's name as an
    option's words, a stored status word as a badge's words."""
    names = backend_names()
    found = []
    for where, text in read(html).texts:
        plain = EMAIL_OR_URL.sub(" ", text)
        found += [f"{where}: {m}" for m in SNAKE.findall(plain)]
        found += [f"{where}: {m}" for m in EXCEPTION.findall(plain)]
        if where == "option" and text in names:
            found.append(f"option: {text}")
        if where == "badge" and text in STATUS_KEYS:
            found.append(f"badge: {text}")
    return found
