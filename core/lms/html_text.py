"""A readable text part from the HTML body IOMAD rendered (``email.body``), as
IOMAD's own ``html_to_text`` gives the mail it sends."""
from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser

_SPACES = re.compile(r"\s+")


class _Text(HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script", "head"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")
        if tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag):
        if tag in ("style", "script", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in ("p", "div", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append("\n")
        if tag == "a" and self.href:
            if self.href.startswith(("http://", "https://", "mailto:")):
                self.out.append(f" ({self.href})")
            self.href = None

    def handle_data(self, data):
        if not self.skip:
            self.out.append(_SPACES.sub(" ", data))


#: a start or end tag the quick pass reads: a plain name, quoted or bare attributes, ``/>``
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)((?:\s+[a-zA-Z][-a-zA-Z0-9_:]*"
                  r"(?:\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'))?)*)\s*(/?)>")
_ATTR = re.compile(r"\s+([a-zA-Z][-a-zA-Z0-9_:]*)(?:\s*=\s*(\"[^\"<>]*\"|'[^'<>]*'))?")
#: elements whose content an HTML parser does not read as markup (and more, to be safe): the full parser
_RAW = frozenset({"script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes", "noscript",
                  "plaintext"})


def _quick(body: str) -> list[str] | None:
    """``_Text``'s pieces for a body of plain tags and text, read in one pass with no parser;
    ``None`` for anything else (a comment, a declaration, a bare ``<``, an unquoted attribute,
    script or style, ...), which the full parser reads."""
    text = _Text.__new__(_Text)  # its handlers, not HTMLParser's state
    text.out, text.skip, text.href = [], 0, None
    pos, n = 0, len(body)
    while pos < n:
        j = body.find("<", pos)
        if j < 0:
            j = n
        if j > pos:
            text.handle_data(html_lib.unescape(body[pos:j]))
        if j == n:
            break
        m = _TAG.match(body, j)
        if m is None:
            return None
        closing, name, attrs, empty = m.groups()
        tag = name.lower()
        if tag in _RAW or (closing and (attrs or empty)):
            return None
        if closing:
            text.handle_endtag(tag)
        else:
            text.handle_starttag(tag, [(k.lower(), None if v is None else html_lib.unescape(v[1:-1]))
                                       for k, v in _ATTR.findall(attrs)])
            if empty:
                text.handle_endtag(tag)
        pos = m.end()
    return text.out


def html_to_text(body: str) -> str:
    """A readable text part from an HTML body: blocks become lines, links keep their address.
    A body of plain tags is read in one quick pass (``_quick``), the same as the parser reads it
    (a test compares the two on generated bodies)."""
    out = _quick(body)
    if out is None:
        parser = _Text()
        parser.feed(body)
        parser.close()
        out = parser.out
    return _joined(out)


def _joined(out: list[str]) -> str:
    lines = [line.strip() for line in "".join(out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
