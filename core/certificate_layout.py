"""Planned certificates: a job's fixed page laid out once, each learner's fields set into it.

A bulk job prints one template thousands of times, and all but a few words of the page are
the same every time. Laying the page out (xhtml2pdf: HTML, CSS, tables, images, fonts) is
most of a certificate's cost, so :func:`render_planned` lays it out once per shape of the
template and then, per learner, only formats the learner's own text and QR code into it.

How a plan is made (:class:`Plan`):

1. The template is rendered with every learner value wrapped (:class:`FieldValue`), so
   each place the page prints a value directly is found again. What the template does with
   the values (``{% if grade %}``, a class chosen by a name's length) is settled by this
   render, so the *skeleton* (the HTML with those places cut out) is the plan's key: two
   learners with the same skeleton have the same page, but for the values.
2. The skeleton is laid out twice, each value replaced by a probe of a known width (one
   long, one short), between zero-width marks. Where a mark is drawn, the text object's
   state (font, size, colour, position, spacing) is what the learner's text will have: the
   recorder (:func:`core.certificate_fonts.recording`) leaves a hole there in the page's
   content stream. The QR code is an image of a colour no QR has, found again the same way.
3. The two layouts must be the same page but for the holes' own lines: every operator the
   same, numbers differing only where a line of text starts, and only on a line that holds
   a hole, after nothing else on it. How far a hole's line start moved against the width
   of its probe says how the line is aligned (left 0, centred 0.5, right 1). Anything else
   (a table whose columns follow their content, a value that wrapped, a transform of the
   text, a value in an attribute) makes the template unplannable, and its certificates are
   laid out in full, as before.
4. The page's resources (embedded font subsets, images, graphics states) are kept as raw
   PDF objects; the subsets of the holes' fonts carry a few characters more (ASCII, the
   code's alphabet), so most learners' text needs no font subset of its own.

Per learner (:meth:`Plan.render`) a ReportLab canvas gets the stored content stream with
the holes filled (the learner's text shaped and encoded as the full layout would, moved by
the line's alignment), the vector QR code, and the raw objects. A value wider than the
long probe (it could wrap), with spaces the layout would fold, or mixing directions, is
laid out in full instead. ``tests/core/test_certificate_layout.py`` holds planned and full
certificates to the same pixels.
"""
from __future__ import annotations

import base64
import io
import logging
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import segno
from markupsafe import escape
from PIL import Image
from pypdf import PdfReader
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject, StreamObject
from reportlab.pdfbase.pdfdoc import PDFDictionary, PDFObject, PDFObjectReference, pdfdocEnc
from reportlab.pdfgen.canvas import Canvas

from core import certificate_fonts as cf

log = logging.getLogger(__name__)

#: Plans kept per process (a worker issues a few templates' certificates at a time).
CACHE_SIZE = 64
#: Skeletons one template may make before it is laid out in full: a template that prints a
#: value changed (``|upper``, ``~``) makes one per learner, and planning each would cost more.
#: The default template has up to twelve (three name sizes, grade and expiry or not).
MAX_SKELETONS = 16
#: How many times a probe is shortened when it wrapped.
PROBE_TRIES = 4
#: The QR image's modules per side of a PNG module, and its quiet zone (as ``qr_data_uri``).
QR_BORDER = 2
QR_SCALE = 8
QR_DARK = (0x1F / 255, 0x2A / 255, 0x44 / 255)
#: What a sentinel QR image is painted: no QR code has this colour.
_SENTINEL_RGB = (1, 2, 3)

#: the marks' nonce (``core.rendering.render_marked_document`` prints them where the template does)
NONCE = _NONCE = secrets.token_hex(8)
_VALUE_MARK = re.compile(f"\x00{_NONCE}:(\\d+)\x00")
_TEXT_HOLE = re.compile("\x00T(\\d+)\x00")
_QR_HOLE = "\x00QR\x00"
_RAW_ELEMENTS = re.compile(r"<(style|script|title|textarea|head)\b.*?</\1\s*>", re.I | re.S)
_QR_ATTRIBUTE = re.compile(r"""\bsrc\s*=\s*(["'])\x00[0-9a-f]+:\d+\x00\1$""")
_MARK_CHARS = re.compile("([\U000F0000-\U000FFFFC])([^\U000F0000-\U000FFFFD]*)(\U000FFFFD)?")


class Unplannable(Exception):
    """The template's page changes with its values in a way a plan cannot follow."""


# --------------------------------------------------------------------------- values and skeletons


class FieldValue(str):
    """A learner's value as the template sees it: the same string, but printed (``{{ x }}``)
    as a mark :func:`skeleton` finds again. What the template builds from it is plain text."""

    field_name: str
    _book: list[tuple[str, str]]

    def __new__(cls, value: str, name: str, book: list[tuple[str, str]]) -> FieldValue:
        self = super().__new__(cls, value)
        self.field_name, self._book = name, book
        return self

    def __html__(self) -> str:
        self._book.append((self.field_name, str(escape(str(self)))))
        return f"\x00{_NONCE}:{len(self._book) - 1}\x00"


def wrap_values(context: Mapping[str, Any], names: set[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``context`` with the string values of ``names`` wrapped, and the book their marks index."""
    book: list[tuple[str, str]] = []
    wrapped = {key: FieldValue(value, key, book) if key in names and isinstance(value, str) else value
               for key, value in context.items()}
    return wrapped, book


@dataclass(frozen=True)
class Skeleton:
    """A rendered template with the places it prints learner values cut out."""

    html: str                # "\x00T<n>\x00" per text hole, "\x00QR\x00" for the QR image's src
    fields: tuple[str, ...]  # the field each text hole prints
    qr: bool
    plannable: bool = True   # False: a value is printed somewhere a hole cannot be (an attribute, the head)


def skeleton(html: str, book: list[tuple[str, str]]) -> Skeleton:
    """Cut the marked values out of ``html``: text in the body becomes a hole, the QR code's
    ``src`` the QR hole; a value anywhere else (an attribute, the head) is put back as text, and
    the skeleton is not plannable."""
    body = html.lower().find("<body")
    raw = [m.span() for m in _RAW_ELEMENTS.finditer(html)]
    out: list[str] = []
    fields: list[str] = []
    qr, last, plannable = False, 0, True
    for match in _VALUE_MARK.finditer(html):
        start = match.start()
        name, escaped = book[int(match.group(1))]
        out.append(html[last:start])
        last = match.end()
        tag_open = html.rfind("<", 0, start) > html.rfind(">", 0, start)
        in_raw = any(a <= start < b for a, b in raw)
        if name == "qr_src" and tag_open and not qr and _QR_ATTRIBUTE.search(html, html.rfind("<", 0, start),
                                                                              match.end() + 1):
            out.append(_QR_HOLE)
            qr = True
        elif not tag_open and not in_raw and start > body and name != "qr_src":
            out.append(f"\x00T{len(fields)}\x00")
            fields.append(name)
        else:  # each learner's page would differ here: laid out in full
            plannable = False
            out.append(escaped)
    out.append(html[last:])
    return Skeleton("".join(out), tuple(fields), qr, plannable)


# --------------------------------------------------------------------------- the recorder


@dataclass
class _Drawn:
    font: str
    size: float
    leading: float
    rise: float
    text: str


@dataclass
class _Recorder:
    """Formats the marked text of a layout being planned: a hole where a value is drawn."""

    charsets: Mapping[str, str]
    fields: tuple[str, ...]
    drawn: dict[int, _Drawn] = field(default_factory=dict)
    broken: set[int] = field(default_factory=set)
    fitted: dict[int, int] = field(default_factory=dict)  # a wrapped probe: the words its first line held
    frozen: dict[str, Any] = field(default_factory=dict)  # member path -> (member, ReportLab state)

    def __call__(self, stack: cf.FontStack, tx, text: str) -> str:
        out, last = [], 0
        for match in _MARK_CHARS.finditer(text):
            if match.start() > last:
                out.append(stack.format_runs(tx, cf.MARKS.sub("", text[last:match.start()])))
            last = match.end()
            slot = ord(match.group(1)) - cf.MARK_BASE
            if match.group(3) is None or slot in self.drawn or slot >= len(self.fields):
                self.broken.add(slot)  # wrapped, or drawn twice
                if match.group(3) is None and slot not in self.fitted:
                    self.fitted[slot] = len(match.group(2).split())
                out.append(stack.format_runs(tx, match.group(2)))
                continue
            self.drawn[slot] = _Drawn(stack.fontName, tx._fontsize, tx._leading, tx._rise, match.group(2))
            self._freeze(stack, tx, self.fields[slot])
            out.append(f"\x00H{slot}\x00")
            tx._curSubset = -1  # what follows the hole says its own font
        rest = text[last:]
        if cf.MARKS.search(rest):
            self.broken.update(ord(c) - cf.MARK_BASE for c in cf.MARKS.findall(rest) if c != cf.MARK_END)
            rest = cf.MARKS.sub("", rest)
        if rest:
            out.append(stack.format_runs(tx, rest))
        return " ".join(out)

    def _freeze(self, stack: cf.FontStack, tx, name: str) -> None:
        """Give the layout's subset of the hole's first font the characters its field mostly uses."""
        member = stack.member(0)
        doc = tx._canvas._doc
        member.ttf.splitString(self.charsets.get(name, ASCII), doc)
        member.ttf.getSubsetInternalName(0, doc)  # the font is in the layout even if nothing else uses it
        self.frozen[member.path] = member.ttf.state[doc]


#: What a hole's font carries for learners' text beyond what the page itself uses.
ASCII = "".join(map(chr, range(32, 127)))


# --------------------------------------------------------------------------- content streams

_TOKEN = re.compile(
    rb"\x00H(\d+)\x00|(\((?:\\.|[^\\()])*\))|(<<|>>|\[|\]|<[0-9A-Fa-f\s]*>)|(/[^\s/\[\]()<>{}%]*)"
    rb"|([+-]?(?:\d+\.?\d*|\.\d+))|([A-Za-z'\"*][A-Za-z0-9'\"*]*)|(\s+)|(.)", re.S)
_NUMBER, _NAME, _OPERATOR, _HOLE = "num", "name", "op", "hole"


def _tokens(stream: bytes) -> list[tuple[str, bytes]]:
    """The content stream as (kind, bytes) tokens; a hole is ("hole", slot)."""
    out = []
    for m in _TOKEN.finditer(stream):
        hole, string, delim, name, number, operator, space, other = m.groups()
        if space is not None:
            continue
        if other is not None:
            raise Unplannable(f"unexpected byte {other!r} in the page")
        if hole is not None:
            out.append((_HOLE, hole))
        elif number is not None:
            out.append((_NUMBER, number))
        elif name is not None:
            out.append((_NAME, name))
        elif operator is not None:
            if operator in (b"BI", b"ID", b"EI"):
                raise Unplannable("inline image")
            out.append((_OPERATOR, operator))
        else:
            out.append(("str", string if string is not None else delim))
    return out


@dataclass
class _Event:
    kind: str         # "show" or "hole"
    index: int        # token index
    line: int         # line segment counter
    x: float
    y: float
    slot: int = -1


def _text_events(tokens: list[tuple[str, bytes]]) -> list[_Event]:
    """Where each text show and hole starts its line, in text space, per line segment."""
    events, operands = [], []
    lx = ly = leading = 0.0
    line = 0
    for index, (kind, value) in enumerate(tokens):
        if kind == _HOLE:
            events.append(_Event("hole", index, line, lx, ly, int(value)))
            continue
        if kind != _OPERATOR:
            operands.append(value)
            continue
        op, args = value, operands
        operands = []
        if op == b"BT":
            lx = ly = 0.0
            line += 1
        elif op == b"Tm":
            a, b, c, d, e, f = (float(v) for v in args[-6:])
            if (a, b, c, d) != (1.0, 0.0, 0.0, 1.0):
                raise Unplannable("a text matrix that scales or turns")
            lx, ly, line = e, f, line + 1
        elif op in (b"Td", b"TD"):
            dx, dy = float(args[-2]), float(args[-1])
            lx, ly, line = lx + dx, ly + dy, line + 1
            if op == b"TD":
                leading = -dy
        elif op == b"TL":
            leading = float(args[-1])
        elif op in (b"T*", b"'", b'"'):
            ly, line = ly - leading, line + 1
            if op != b"T*":
                events.append(_Event("show", index, line, lx, ly))
        elif op in (b"Tj", b"TJ"):
            events.append(_Event("show", index, line, lx, ly))
        elif op == b"Tz" and float(args[-1]) != 100:
            raise Unplannable("horizontal text scaling")
    return events


def _alignments(long: list[tuple[str, bytes]], short: list[tuple[str, bytes]],
                widths: Mapping[int, tuple[float, float]]) -> dict[int, float]:
    """How each hole's line is aligned, from the two layouts; ``Unplannable`` when the pages
    differ anywhere else."""
    if len(long) != len(short):
        raise Unplannable("the page's operators change with the values")
    for i, (a, b) in enumerate(zip(long, short, strict=True)):
        if a == b:
            continue
        if a[0] != _NUMBER or b[0] != _NUMBER:
            raise Unplannable("the page's operators change with the values")
        j = i + 1
        while j < len(long) and long[j][0] == _NUMBER:
            j += 1
        if j == len(long) or long[j] not in ((_OPERATOR, b"Td"), (_OPERATOR, b"TD"), (_OPERATOR, b"Tm")):
            raise Unplannable("something other than a line of text moves with the values")
    ev_long, ev_short = _text_events(long), _text_events(short)
    aligned: dict[int, float] = {}
    hole_lines: dict[int, int] = {}
    for el, es in zip(ev_long, ev_short, strict=True):
        if el.kind == "hole":
            if abs(el.y - es.y) > 1e-3:
                raise Unplannable("a value moves its line up or down")
            w_long, w_short = widths[el.slot]
            alpha = (es.x - el.x) / (w_long - w_short) if w_long != w_short else 0.0
            if not -0.01 <= alpha <= 1.01:
                raise Unplannable("a value's line moves more than its width")
            aligned[el.slot] = min(max(alpha, 0.0), 1.0)
            hole_lines[el.line] = el.slot
        elif abs(el.x - es.x) > 1e-3 or abs(el.y - es.y) > 1e-3:
            if el.line not in hole_lines:
                raise Unplannable("text before a value moves with it")
    return aligned


# --------------------------------------------------------------------------- raw objects


class _Raw(PDFObject):
    """A PDF object of the planned page, written as it was; references resolved per document."""

    def __init__(self, pieces: tuple[bytes | int, ...]):
        self.pieces = pieces

    def format(self, document) -> bytes:
        numbers = document.idToObjectNumberAndVersion
        return b"".join(p if isinstance(p, bytes) else pdfdocEnc("{} {} R".format(*numbers[f"BG{p}"]))
                        for p in self.pieces)


def _serialize(obj, refs: set[int]) -> list[bytes | int]:
    """``obj`` (pypdf) as bytes, an ``int`` where it references another object (noted in ``refs``)."""
    if isinstance(obj, IndirectObject):
        refs.add(obj.idnum)
        return [obj.idnum]
    if isinstance(obj, StreamObject):
        data = obj._data
        head = DictionaryObject({k: v for k, v in obj.items() if k != "/Length"})
        return [*_serialize(head, refs)[:-1], f"/Length {len(data)} >>\nstream\n".encode(), data,
                b"\nendstream"]
    if isinstance(obj, DictionaryObject):
        out: list[bytes | int] = [b"<< "]
        for key, value in obj.items():
            out.append(_plain(NameObject(key)) + b" ")
            out.extend(_serialize(value, refs))
            out.append(b" ")
        out.append(b">>")
        return out
    if isinstance(obj, ArrayObject):
        out = [b"["]
        for value in obj:
            out.extend(_serialize(value, refs))
            out.append(b" ")
        out.append(b"]")
        return out
    return [_plain(obj)]


def _plain(obj) -> bytes:
    buf = io.BytesIO()
    obj.write_to_stream(buf)
    return buf.getvalue()


def _merge(pieces: list[bytes | int]) -> tuple[bytes | int, ...]:
    merged: list[bytes | int] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    return tuple(merged)


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Hole:
    slot: int
    field: str
    font: str
    size: float
    leading: float
    rise: float
    width: float      # of the short probe, which the stored page was laid out with
    max_width: float  # of the long probe: anything wider could wrap
    align: float


class _PlannedCanvas(Canvas):
    """A canvas whose page also lists the planned page's images and graphics states."""

    def __init__(self, *args, xobjects: dict[str, str], states: dict[str, str], **kwargs):
        self.planned_xobjects, self.planned_states = xobjects, states
        super().__init__(*args, **kwargs)

    def _setXObjects(self, thing) -> None:  # noqa: N802 - ReportLab's name
        super()._setXObjects(thing)
        if self.planned_xobjects:
            entries = dict(thing.XObjects.dict) if thing.XObjects is not None else {}
            entries.update({k: PDFObjectReference(v) for k, v in self.planned_xobjects.items()})
            thing.XObjects = PDFDictionary(entries)

    def _setExtGState(self, obj) -> None:  # noqa: N802 - ReportLab's name
        super()._setExtGState(obj)
        if self.planned_states:
            state = obj.ExtGState
            entries = dict(state.dict) if state is not None else {}
            entries.update({k: PDFObjectReference(v) for k, v in self.planned_states.items()})
            obj.ExtGState = PDFDictionary(entries)


class Plan:
    """One template shape laid out: its page with holes, and what fills them."""

    def __init__(self, *, size: tuple[float, float], pieces: list[bytes | _Hole | str],
                 objects: dict[int, tuple[bytes | int, ...]], fonts: dict[str, int],
                 xobjects: dict[str, int], states: dict[str, int],
                 frozen: dict[str, tuple[dict[int, str], dict[int, int]]], info: dict[str, str]):
        self.size, self.pieces, self.objects = size, pieces, objects
        self.fonts, self.xobjects, self.states = fonts, xobjects, states
        self.frozen, self.info = frozen, info

    def render(self, values: Mapping[str, str], qr_text: str) -> bytes | None:
        """The certificate for these values, or ``None`` when one of them needs the full layout."""
        out = io.BytesIO()
        canvas = _PlannedCanvas(out, pagesize=self.size, pageCompression=1,
                                xobjects={k: f"BG{v}" for k, v in self.xobjects.items()},
                                states={k: f"BG{v}" for k, v in self.states.items()})
        for key, value in self.info.items():
            getattr(canvas, key)(value)
        tx = canvas.beginText(0, 0)
        tx.frozen_fonts = self.frozen
        parts: list[bytes] = []
        for piece in self.pieces:
            if isinstance(piece, bytes):
                parts.append(piece)
            elif isinstance(piece, _Hole):
                filled = _fill(tx, piece, values.get(piece.field, ""))
                if filled is None:
                    return None
                parts.append(filled.encode("latin-1"))
            else:
                parts.append(_qr_operators(qr_text))
        doc = canvas._doc
        for number, pieces in self.objects.items():
            doc.Reference(_Raw(pieces), f"BG{number}")
        fonts = doc.idToObject["BasicFonts"].dict
        for name, number in self.fonts.items():
            fonts[name] = PDFObjectReference(f"BG{number}")
        canvas._code.append(b"\n".join(parts).decode("latin-1"))
        canvas.showPage()
        canvas.save()
        return out.getvalue()


def _fill(tx, hole: _Hole, value: str) -> str | None:
    """The operators that print ``value`` in ``hole``, or ``None`` when it needs the full layout."""
    if not value or value != " ".join(value.split()):
        return None  # the layout would fold these spaces, or drop an empty line
    if cf.MARKS.search(value) or (_RTL.search(value) and _LTR.search(value)):
        return None  # mixed directions: the line's own bidi order decides
    stack = cf.stack(hole.font)
    width = stack.stringWidth(value, hole.size)
    if width > hole.max_width + 1e-6:
        return None
    tx._fontname, tx._fontsize, tx._leading, tx._rise = hole.font, hole.size, hole.leading, hole.rise
    tx._curSubset = -1
    ops = stack.format_runs(tx, cf.visual(value)) if value else ""
    shift = -hole.align * (width - hole.width)
    if abs(shift) > 1e-6 and ops:
        # The line starts where the alignment puts it: a TJ move, after the first font
        # selection (its size scales the move), leaves the line's own start where it was.
        end = ops.index(" TL") + 3
        ops = f"{ops[:end]} [{-shift * 1000 / hole.size:.4f}] TJ{ops[end:]}"
    return ops


_RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")
_LTR = re.compile("[A-Za-z0-9\u00c0-\u024f\u0370-\u052f\u0900-\u0dff\u0e00-\u0e7f\u3040-\u9fff\uac00-\ud7af]")


def _qr_operators(text: str) -> bytes:
    """The QR code of ``text`` in the unit square the QR image was drawn in (its quiet zone white):
    one rectangle per horizontal run of dark modules, in module units."""
    matrix = segno.make_qr(text, error="m", mask=0).matrix
    side = len(matrix) + 2 * QR_BORDER
    ops = [_QR_HEAD, b"%.6f 0 0 %.6f 0 0 cm" % (1.0 / side, 1.0 / side)]
    for row, cells in enumerate(matrix):
        y = side - row - QR_BORDER - 1
        ops.extend(b"%d %d %d 1 re" % (run.start() + QR_BORDER, y, run.end() - run.start())
                   for run in _DARK_RUN.finditer(cells))
    ops.append(b"f Q")
    return b"\n".join(ops)


_DARK_RUN = re.compile(b"[\x01]+")
_QR_HEAD = b"q 1 1 1 rg 0 0 1 1 re f " + "{:.4f} {:.4f} {:.4f} rg".format(*QR_DARK).encode()


def qr_png_data_uri(text: str) -> str:
    """The QR code of ``text`` as the PNG ``data:`` URI a full layout shows (same mask as the plan)."""
    qr = segno.make_qr(text, error="m", mask=0)
    return qr.png_data_uri(scale=QR_SCALE, border=QR_BORDER, dark="#1f2a44")


def _sentinel_png(text: str) -> str:
    """A PNG the size of ``text``'s QR image, painted a colour no QR code has."""
    side = segno.make_qr(text, error="m", mask=0).symbol_size(scale=QR_SCALE, border=QR_BORDER)[0]
    out = io.BytesIO()
    Image.new("RGB", (int(side), int(side)), _SENTINEL_RGB).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _probe(words: int) -> str:
    """A long probe: mixed case, so a text-transform shows; short words, so it wraps where the
    line is full (and the next try takes the words that fitted)."""
    return " ".join(["Mm"] * words)


SHORT_PROBE = "Mm"
LONG_PROBE_WORDS = 60


def build_plan(sk: Skeleton, lay_out: Callable[[str], bytes], charsets: Mapping[str, str],
               qr_text: str) -> Plan:
    """Lay ``sk`` out (``lay_out``: HTML -> PDF, the full layout) with probes and make its plan."""
    words = {slot: LONG_PROBE_WORDS for slot in range(len(sk.fields))}
    sentinel = _sentinel_png(qr_text) if sk.qr else ""
    for _attempt in range(PROBE_TRIES):
        long_rec = _Recorder(charsets, sk.fields)
        long_pdf = _lay_out_probe(sk, lay_out, {s: _probe(n) for s, n in words.items()}, sentinel, long_rec)
        if not long_rec.broken:
            break
        for slot in long_rec.broken:
            fitted = long_rec.fitted.get(slot, words[slot] // 2)
            words[slot] = min(fitted, words[slot] - 1)
        if any(n < 2 for n in words.values()):
            raise Unplannable("a value wraps even when it is short")
    else:
        raise Unplannable("a value keeps wrapping")
    short_rec = _Recorder(charsets, sk.fields)
    short_pdf = _lay_out_probe(sk, lay_out, dict.fromkeys(words, SHORT_PROBE), sentinel, short_rec)
    if short_rec.broken or set(short_rec.drawn) != set(long_rec.drawn):
        raise Unplannable("the short and the long values are not drawn alike")

    long_page, short_page = _page(long_pdf), _page(short_pdf)
    widths = {}
    for slot, drawn in short_rec.drawn.items():
        if drawn.text != SHORT_PROBE or long_rec.drawn[slot].text != _probe(words[slot]):
            raise Unplannable("the template's style changes the text (a text-transform)")
        stack = cf.stack(drawn.font)
        widths[slot] = (stack.stringWidth(long_rec.drawn[slot].text, drawn.size),
                        stack.stringWidth(drawn.text, drawn.size))
    long_tokens, short_tokens = _tokens(long_page.stream), _tokens(short_page.stream)
    aligned = _alignments(long_tokens, short_tokens, widths)
    if set(aligned) != set(short_rec.drawn):
        raise Unplannable("a value is drawn outside the text of the page")
    return _assemble(short_page, short_tokens, short_rec, sk, widths, aligned, qr_text)


def _lay_out_probe(sk: Skeleton, lay_out, probes: Mapping[int, str], sentinel: str, recorder: _Recorder) -> bytes:
    html = _TEXT_HOLE.sub(lambda m: chr(cf.MARK_BASE + int(m.group(1))) + probes[int(m.group(1))] + cf.MARK_END,
                          sk.html)
    html = html.replace(_QR_HOLE, sentinel)
    with cf.recording(recorder):
        return lay_out(html)


@dataclass
class _Page:
    reader: PdfReader
    stream: bytes
    resources: DictionaryObject
    size: tuple[float, float]
    info: dict[str, str]


def _page(pdf: bytes) -> _Page:
    reader = PdfReader(io.BytesIO(pdf))
    if len(reader.pages) != 1:
        raise Unplannable("the certificate is more than one page")
    page = reader.pages[0]
    if "/Annots" in page:
        raise Unplannable("the page has links or annotations")
    resources = page["/Resources"].get_object()
    if not isinstance(resources, DictionaryObject):
        raise Unplannable("the page has no resources")
    for key in resources:
        if key not in ("/Font", "/XObject", "/ExtGState", "/ProcSet"):
            raise Unplannable(f"the page uses {key} resources")
    box = page.mediabox
    meta: Mapping[str, Any] = reader.metadata or {}
    info = {setter: str(meta[key]) for key, setter in (("/Title", "setTitle"), ("/Author", "setAuthor"),
                                                       ("/Subject", "setSubject")) if meta.get(key)}
    contents = page.get_contents()
    if contents is None:
        raise Unplannable("the page has no content")
    return _Page(reader, contents.get_data(), resources, (float(box.width), float(box.height)), info)


def _assemble(page: _Page, tokens, recorder: _Recorder, sk: Skeleton, widths, aligned, qr_text: str) -> Plan:
    """The plan: the short layout's stream cut at its holes, its resources as raw objects."""
    refs: set[int] = set()
    renames: dict[bytes, bytes] = {}
    fonts: dict[str, int] = {}
    xobjects: dict[str, int] = {}
    states: dict[str, int] = {}
    sentinel_name = None
    for kind, target in (("/Font", fonts), ("/XObject", xobjects), ("/ExtGState", states)):
        entries = page.resources.get(kind)
        entries = entries.get_object() if entries is not None else None
        if entries is not None and not isinstance(entries, DictionaryObject):
            raise Unplannable(f"the page's {kind} resources are not a dictionary")
        for name, ref in (entries.items() if entries is not None else ()):
            if not isinstance(ref, IndirectObject):
                raise Unplannable(f"an inline {kind} resource")
            obj = ref.get_object()
            if (kind == "/XObject" and isinstance(obj, DictionaryObject) and obj.get("/Subtype") == "/Image"
                    and _is_sentinel(obj)):
                sentinel_name = name.encode()
                continue
            new = "BG" + name[1:].replace("FormXob.", "")
            renames[name.encode()] = b"/" + (f"FormXob.{new}" if kind == "/XObject" else new).encode()
            target[f"FormXob.{new}" if kind == "/XObject" else new] = ref.idnum
            refs.add(ref.idnum)
    if sk.qr and sentinel_name is None:
        raise Unplannable("the QR code is not drawn as an image")
    objects: dict[int, tuple[bytes | int, ...]] = {}
    todo = list(refs)
    while todo:
        number = todo.pop()
        if number in objects:
            continue
        found: set[int] = set()
        objects[number] = _merge(_serialize(page.reader.get_object(number), found))
        todo.extend(found - objects.keys())
    holes = {slot: _Hole(slot, sk.fields[slot], d.font, d.size, d.leading, d.rise, widths[slot][1],
                         widths[slot][0], aligned[slot]) for slot, d in recorder.drawn.items()}
    pieces: list[bytes | _Hole | str] = []
    current: list[bytes] = []
    for index, (kind, value) in enumerate(tokens):
        if kind == _HOLE:
            pieces.append(b" ".join(current))
            current = []
            pieces.append(holes[int(value)])
        elif kind == _NAME and value == sentinel_name and tokens[index + 1] == (_OPERATOR, b"Do"):
            pieces.append(b" ".join(current))
            current = []
            pieces.append("QR")
        elif kind == _OPERATOR and value == b"Do" and tokens[index - 1] == (_NAME, sentinel_name):
            continue
        else:
            current.append(renames.get(value, value) if kind == _NAME else value)
    pieces.append(b" ".join(current))
    frozen = {}
    for path, state in recorder.frozen.items():
        names = {s: f"/BG{state.internalName}+{s}" for s in range(len(state.subsets))}
        frozen[path] = (names, dict(state.assignments))
    return Plan(size=page.size, pieces=pieces, objects=objects, fonts=fonts,
                xobjects=xobjects, states=states, frozen=frozen, info=page.info)


def _is_sentinel(image) -> bool:
    try:
        data = image.get_data()
    except Exception:  # noqa: BLE001 - an image pypdf cannot decode is not ours
        return False
    return data[:3] == bytes(_SENTINEL_RGB) and image.get("/Width") == image.get("/Height")


# --------------------------------------------------------------------------- the cache


class Planner:
    """Plans by template and skeleton, per process; a template that cannot be planned is
    remembered as such, so its certificates go straight to the full layout."""

    def __init__(self, size: int = CACHE_SIZE):
        self._plans: OrderedDict[tuple, Plan | None] = OrderedDict()
        self._skeletons: dict[tuple, int] = {}
        self._size = size
        self._lock = threading.Lock()

    def plan(self, template_key: tuple, sk: Skeleton, make: Callable[[], Plan]) -> Plan | None:
        key = (template_key, sk.html)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
            seen = self._skeletons.get(template_key, 0)
            if seen >= MAX_SKELETONS:
                return None
            self._skeletons[template_key] = seen + 1
        try:
            plan: Plan | None = make()
        except Unplannable as exc:
            log.info("Certificate template laid out in full for every learner: %s", exc)
            plan = None
        except Exception:  # noqa: BLE001 - a plan is an optimisation: the full layout stays right
            log.exception("Certificate template could not be planned; laid out in full")
            plan = None
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._skeletons.clear()


planner = Planner()
