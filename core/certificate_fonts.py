"""Certificate fonts: every script a Moodle site prints, with a fallback per glyph.

ReportLab's built-in fonts (Helvetica, Times, Courier) know Western Latin only, so
a learner called 王, Łukasz or Nguyễn printed as blanks. Here each family a
certificate template can name (sans, serif, mono; regular, bold, italic, bold
italic) is a :class:`FontStack`: an ordered list of TrueType files (Noto Sans or
Serif for Latin, Greek and Cyrillic, then Noto's Arabic, Hebrew, Devanagari,
Thai and other script faces, Droid Sans Fallback for Chinese, Japanese and
Korean, DejaVu, and ReportLab's own Vera last). A run of text is split by the
first font that has each character, and every font is embedded as a subset of
the glyphs used.

Scripts whose letters change shape or order (Arabic, Hebrew points, the Indic
scripts, Thai, combining marks) are shaped with HarfBuzz (``uharfbuzz``): the
glyphs it picks (joined Arabic forms, Devanagari conjuncts) and its offsets
(marks) are drawn as they are, and the run is wrapped in a marked-content span
whose ``/ActualText`` is the run's own characters in logical order, so a PDF
reader extracts and searches the words the learner typed, not presentation
glyphs. Direction (bidi) is resolved before drawing: xhtml2pdf reorders each
line with its own UAX #9 implementation, and :func:`visual` does the same for
text drawn directly.

The one hook into ReportLab is :func:`install_text_hook`: ReportLab's text
object asks the font of each run to format it when the font has a
``format_text`` method (a :class:`FontStack`); every other font is formatted by
ReportLab as before.

The font files come from the folders of :func:`configure` (default: the
system's font folders; Debian's ``fonts-noto-core`` and ``fonts-droid-fallback``
packages). A missing file is skipped, and :func:`coverage` says which scripts
then print as blanks; Vera, shipped inside ReportLab, is always there.
"""
from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from pathlib import Path

import reportlab
import uharfbuzz as hb
from reportlab.lib.fonts import addMapping
from reportlab.lib.rl_accel import fp_str
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.textobject import PDFTextObject
from xhtml2pdf import default as xhtml2pdf_default
from xhtml2pdf import util as xhtml2pdf_util
from xhtml2pdf.bidi import get_display, needs_bidi

log = logging.getLogger(__name__)

#: Where font files are looked for when :func:`configure` was not called.
DEFAULT_FONT_DIRS: tuple[str, ...] = ("/usr/share/fonts", "/usr/local/share/fonts")

#: ReportLab's own fonts: Bitstream Vera, the last resort every stack ends with.
REPORTLAB_FONT_DIR = str(Path(reportlab.__file__).parent / "fonts")

# The script faces every stack falls back to, regular and bold (Noto, fonts-noto-core).
_SCRIPTS = ("Arabic", "Hebrew", "Devanagari", "Thai", "Bengali", "Tamil", "Telugu", "Gujarati", "Gurmukhi",
            "Kannada", "Malayalam", "Sinhala", "Khmer", "Lao", "Myanmar", "Armenian", "Georgian", "Ethiopic",
            "Thaana", "Syriac")
_SERIF_SCRIPTS = {"Arabic": "NotoNaskhArabic", "Hebrew": "NotoSerifHebrew", "Devanagari": "NotoSerifDevanagari",
                  "Thai": "NotoSerifThai"}
# Han (Chinese, Japanese kanji) and kana: fonts-droid-fallback; Hangul (and Han again): fonts-wqy-microhei.
_CJK = ("DroidSansFallbackFull.ttf", "wqy-microhei.ttc")


def _scripts(weight: str, serif: bool) -> tuple[str, ...]:
    files = []
    for script in _SCRIPTS:
        if serif and script in _SERIF_SCRIPTS:
            files.append(f"{_SERIF_SCRIPTS[script]}-{weight}.ttf")
        files.append(f"NotoSans{script}-{weight}.ttf")
        if weight == "Bold":  # a script without a bold face still prints, in its regular weight
            files.append(f"NotoSans{script}-Regular.ttf")
    return tuple(files)


def _stack(first: Sequence[str], weight: str, serif: bool, last: Sequence[str]) -> tuple[str, ...]:
    return (*first, *_scripts(weight, serif), *_CJK, *last)


#: Family -> style -> font files, first match wins per character.
FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "sans": {
        "regular": _stack(["NotoSans-Regular.ttf"], "Regular", False, ["DejaVuSans.ttf", "Vera.ttf"]),
        "bold": _stack(["NotoSans-Bold.ttf"], "Bold", False, ["DejaVuSans-Bold.ttf", "VeraBd.ttf"]),
        "italic": _stack(["NotoSans-Italic.ttf", "NotoSans-Regular.ttf"], "Regular", False,
                         ["DejaVuSans-Oblique.ttf", "VeraIt.ttf"]),
        "bolditalic": _stack(["NotoSans-BoldItalic.ttf", "NotoSans-Bold.ttf"], "Bold", False,
                             ["DejaVuSans-BoldOblique.ttf", "VeraBI.ttf"]),
    },
    "serif": {
        "regular": _stack(["NotoSerif-Regular.ttf"], "Regular", True, ["DejaVuSerif.ttf", "Vera.ttf"]),
        "bold": _stack(["NotoSerif-Bold.ttf"], "Bold", True, ["DejaVuSerif-Bold.ttf", "VeraBd.ttf"]),
        "italic": _stack(["NotoSerif-Italic.ttf", "NotoSerif-Regular.ttf"], "Regular", True,
                         ["DejaVuSerif-Italic.ttf", "VeraIt.ttf"]),
        "bolditalic": _stack(["NotoSerif-BoldItalic.ttf", "NotoSerif-Bold.ttf"], "Bold", True,
                             ["DejaVuSerif-BoldItalic.ttf", "VeraBI.ttf"]),
    },
    "mono": {
        "regular": _stack(["NotoSansMono-Regular.ttf", "DejaVuSansMono.ttf", "NotoSans-Regular.ttf"], "Regular",
                          False, ["DejaVuSans.ttf", "Vera.ttf"]),
        "bold": _stack(["NotoSansMono-Bold.ttf", "DejaVuSansMono-Bold.ttf", "NotoSans-Bold.ttf"], "Bold", False,
                       ["DejaVuSans-Bold.ttf", "VeraBd.ttf"]),
        "italic": _stack(["DejaVuSansMono-Oblique.ttf", "NotoSansMono-Regular.ttf", "NotoSans-Italic.ttf"],
                         "Regular", False, ["DejaVuSans-Oblique.ttf", "VeraIt.ttf"]),
        "bolditalic": _stack(["DejaVuSansMono-BoldOblique.ttf", "NotoSansMono-Bold.ttf", "NotoSans-BoldItalic.ttf"],
                             "Bold", False, ["DejaVuSans-BoldOblique.ttf", "VeraBI.ttf"]),
    },
}

#: The ReportLab name of each family's stack; xhtml2pdf's names for Helvetica, Times and Courier map here.
STACK_NAMES = {"sans": "CertSans", "serif": "CertSerif", "mono": "CertMono"}
_STYLE_SUFFIX = {"regular": "", "bold": "-Bold", "italic": "-Italic", "bolditalic": "-BoldItalic"}

#: The CSS and PostScript names templates use, by family (xhtml2pdf's defaults, lower case).
FAMILY_ALIASES = {
    "sans": ("helvetica", "arial", "sans", "sansserif", "sans-serif", "verdana", "geneva", "noto sans",
             "dejavu sans", "system-ui", "ui-sans-serif"),
    "serif": ("times", "times-roman", "times new roman", "georgia", "serif", "noto serif", "dejavu serif",
              "ui-serif"),
    "mono": ("courier", "courier new", "monospace", "monospaced", "mono", "noto sans mono", "dejavu sans mono",
             "ui-monospace"),
}
#: The PostScript names of the standard fonts, which xhtml2pdf also knows with a style suffix.
_PS_NAMES = {"sans": ("helvetica",), "serif": ("times", "times-roman"), "mono": ("courier",)}
_PS_STYLES = {"regular": ("",), "bold": ("-bold",), "italic": ("-oblique", "-italic"),
              "bolditalic": ("-boldoblique", "-bolditalic")}

#: A sample of each script a Moodle site's names come in, for :func:`coverage`.
SCRIPT_SAMPLES = {
    "Latin (incl. Polish, Vietnamese, Turkish)": "AaŁłŚśŻżĄąĘęỄễƯưĞğİı",
    "Greek": "ΑαΩω",
    "Cyrillic": "ЖжЯяЄєЇї",
    "Arabic": "بتثمنه",
    "Hebrew": "אבגש",
    "Devanagari": "कखगनम",
    "Thai": "กขคง",
    "Chinese": "王李张刘陈",
    "Japanese": "あいアイ山田",
    "Korean": "김이박한",
}

# Characters whose glyphs depend on their neighbours: these runs are shaped by HarfBuzz.
_COMPLEX = re.compile(
    "[\u0300-\u036f\u0483-\u0489\u0591-\u07ff\u0800-\u08ff\u0900-\u0dff\u0e00-\u0eff\u0f00-\u109f"
    "\u1100-\u11ff\u1780-\u18af\u1a00-\u1aff\u1b00-\u1cff\u1dc0-\u1dff\u200c\u200d\u20d0-\u20ff"
    "\ua8e0-\ua8ff\ufb1d-\ufdff\ufe00-\ufe0f\ufe20-\ufe2f\ufe70-\ufeff]")
_PRESENTATION_FORM = re.compile("[\ufb50-\ufdff\ufe70-\ufeff]")
_RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")

#: Zero-width characters that mark where a field's text starts (``MARK_BASE + slot``) and ends
#: (:data:`MARK_END`) while a layout is being planned (``core.certificate_layout``); plane 15's
#: private use area, which no font here draws.
MARK_BASE = 0xF0000
MARK_END = "\U000FFFFD"
MARKS = re.compile("[\U000F0000-\U000FFFFD]")

#: While a layout is planned: the callable that formats text carrying marks (see :func:`recording`).
_recorder: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("certificate_recorder", default=None)

_lock = threading.RLock()
_font_dirs: tuple[str, ...] = DEFAULT_FONT_DIRS
_stacks: dict[str, FontStack] = {}
_members: dict[str, _Member] = {}
_registered = False
_generation = 0


# --------------------------------------------------------------------------- configuration


def configure(font_dirs: Iterable[str] | None) -> None:
    """Look for font files in ``font_dirs`` (searched recursively, in order; ``None``: the defaults).

    Stacks already loaded are dropped, so the next certificate uses the new folders."""
    global _font_dirs, _generation
    dirs = tuple(font_dirs) if font_dirs else DEFAULT_FONT_DIRS
    with _lock:
        if dirs != _font_dirs:
            _font_dirs = dirs
            _generation += 1
            _font_index.cache_clear()
            _stacks.clear()
            _members.clear()
            for family in FAMILIES:  # the registered names now stand for new stacks
                for style in _STYLE_SUFFIX:
                    name = _register_stack(family, style).name
                    xhtml2pdf_util._font_coverage.pop(name, None)  # what xhtml2pdf knew of the old one


def font_dirs() -> tuple[str, ...]:
    """The folders font files are looked for in."""
    return _font_dirs


def generation() -> int:
    """A number that changes whenever :func:`configure` changes the fonts (what was laid out in
    the old ones, such as a planned layout's subsets, is not to be reused)."""
    return _generation


@lru_cache(maxsize=1)
def _font_index() -> dict[str, str]:
    """File name -> path for every font file under the configured folders (the first one found wins)."""
    found: dict[str, str] = {}
    for root in (*_font_dirs, REPORTLAB_FONT_DIR):
        for folder, _subdirs, files in sorted(os.walk(root)):
            for name in sorted(files):
                if name.lower().endswith((".ttf", ".ttc")):  # a collection: its first face
                    found.setdefault(name, os.path.join(folder, name))
    return found


def find_font_file(name: str) -> str | None:
    """The path of font file ``name`` under the configured folders, else ``None``."""
    return _font_index().get(name)


# --------------------------------------------------------------------------- stacks


class _Member:
    """One TrueType file of a stack, loaded on first use and shared by every stack that lists it."""

    def __init__(self, path: str):
        self.path = path
        self.ttf = TTFont(f"cert:{Path(path).stem}", path, asciiReadable=0, shapable=False)
        pdfmetrics.registerFont(self.ttf)
        face = self.ttf.face
        self.char_to_glyph: dict[int, int] = face.charToGlyph
        self.widths: dict[int, int] = face.charWidths
        self.default_width = face.defaultWidth
        self.units = 1000.0 / face.unitsPerEm
        self._hb_font: hb.Font | None = None
        self._private = 0xE000
        self._glyph_chars: dict[int, int] = {}

    def has(self, code: int) -> bool:
        return code in self.char_to_glyph

    @property
    def hb_font(self) -> hb.Font:
        if self._hb_font is None:
            self._hb_font = hb.Font(hb.Face(hb.Blob(self.ttf.face._ttf_data)))
        return self._hb_font

    def char_for_glyph(self, gid: int) -> int:
        """A character ReportLab's subset can carry glyph ``gid`` as: one the font maps to it,
        else a private-use code point set aside for it (a joined Arabic form has none of its own)."""
        code = self._glyph_chars.get(gid)
        if code is not None:
            return code
        face = self.ttf.face
        for candidate in face.glyphToChar.get(gid, ()):
            if self.char_to_glyph.get(candidate) == gid:
                code = candidate
                break
        else:
            while self._private in self.char_to_glyph:
                self._private += 1
            if self._private > 0xF8FF:
                raise ValueError(f"{self.path}: no private-use code points left for shaped glyphs")
            code = self._private
            self.char_to_glyph[code] = gid
            face.glyphToChar.setdefault(gid, []).append(code)
            self.widths[code] = round(self.hb_font.get_glyph_h_advance(gid) * self.units)
        self._glyph_chars[gid] = code
        return code


def _member(path: str) -> _Member:
    with _lock:
        member = _members.get(path)
        if member is None:
            member = _members[path] = _Member(path)
        return member


class _StackFace:
    """The stack's face for ReportLab: its own name (ReportLab registers one font per face name),
    the metrics of its first file."""

    def __init__(self, stack: FontStack, primary):
        self.name = stack.name
        self._stack = stack
        self._primary = primary

    @property
    def charToGlyph(self) -> dict[int, int]:  # noqa: N802 - ReportLab's name
        """Every character some member draws, for xhtml2pdf's coverage check (it loads every file once)."""
        return self._stack.coverage_map()

    def __getattr__(self, attr: str):
        return getattr(self._primary, attr)


@dataclass(frozen=True)
class Run:
    """A stretch of text one font draws; ``shaped`` when HarfBuzz must pick its glyphs."""

    member: int
    text: str
    shaped: bool


@dataclass(frozen=True)
class ShapedGlyph:
    code: str       # the character the subset carries the glyph as
    advance: float  # in thousandths of the font size
    dx: float
    dy: float
    width: float    # what the PDF font's /Widths says the glyph advances


class FontStack:
    """A ReportLab font made of several TrueType files, the first that has a character drawing it.

    Registered with :mod:`reportlab.pdfbase.pdfmetrics` under ``name``, it measures text
    (:meth:`stringWidth`) and formats it for a text object (:meth:`format_text`) run by run."""

    _dynamicFont = 1
    _multiByte = 1
    shapable = False
    substitutionFonts: list = []
    encName = "utf-8"

    def __init__(self, name: str, files: Sequence[str]):
        self.fontName = self.name = name
        self.files = tuple(files)
        self.paths = tuple(p for p in (find_font_file(f) for f in self.files) if p)
        self._members: list[_Member | None] = [None] * len(self.paths)
        self._char_member: dict[int, int] = {}
        self._shape_cache: dict[tuple[int, str, bool], tuple[ShapedGlyph, ...]] = {}
        self._coverage: dict[int, int] | None = None
        self.face = _StackFace(self, self.member(0).ttf.face)
        self.ascent, self.descent = self.face.ascent, self.face.descent

    def member(self, index: int) -> _Member:
        found = self._members[index]
        if found is None:
            found = self._members[index] = _member(self.paths[index])
        return found

    def member_for(self, code: int) -> int:
        """Index of the first member with a glyph for ``code`` (the first member when none has one)."""
        index = self._char_member.get(code)
        if index is None:
            index = 0
            for i in range(len(self.paths)):
                if self.member(i).has(code):
                    index = i
                    break
            self._char_member[code] = index
        return index

    def coverage_map(self) -> dict[int, int]:
        """Character -> member index for every character of every member, Arabic presentation forms
        left out: xhtml2pdf joins Arabic letters into those forms only where the font has them, and
        HarfBuzz joins them better from the letters themselves. The planning marks are in: they
        draw nothing, and on purpose."""
        if self._coverage is None:
            found: dict[int, int] = {}
            for index in reversed(range(len(self.paths))):
                found.update(dict.fromkeys(self.member(index).char_to_glyph, index))
            self._coverage = {c: i for c, i in found.items() if not _PRESENTATION_FORM.match(chr(c))}
            self._coverage.update(dict.fromkeys((*range(MARK_BASE, MARK_BASE + 256), ord(MARK_END)), 0))
        return self._coverage

    def covers(self, text: str) -> bool:
        """Whether some member has a glyph for every character of ``text``."""
        return all(self.member(self.member_for(ord(c))).has(ord(c)) for c in text if not c.isspace())

    def runs(self, text: str) -> list[Run]:
        """``text`` split into runs by font. A space is the first font's, as when xhtml2pdf
        measures the words of a line one by one and the spaces between them on their own; a
        combining mark or a joiner stays with the letter before it."""
        runs: list[Run] = []
        start, current = 0, -1
        for i, char in enumerate(text):
            if char in " \u00a0":
                index = 0
            elif current >= 0 and (char in "\u200c\u200d" or unicodedata.combining(char)
                                   or self.member(current).has(ord(char))):
                continue  # the current font has it: the run goes on
            else:
                index = self.member_for(ord(char))
            if index != current:
                if current >= 0:
                    runs.append(self._run(current, text[start:i]))
                start, current = i, index
        if current >= 0:
            runs.append(self._run(current, text[start:]))
        return runs

    @staticmethod
    def _run(member: int, text: str) -> Run:
        return Run(member, text, _COMPLEX.search(text) is not None)

    # ---------------------------------------------------------------- measuring

    def stringWidth(self, text: str, size: float, encoding: str = "utf8") -> float:  # noqa: N802 - ReportLab's name
        """The advance of ``text`` (logical order) at ``size`` points, shaped where it must be."""
        if isinstance(text, bytes):
            text = text.decode(encoding)
        if not text.isascii() and MARKS.search(text):
            text = MARKS.sub("", text)
        total = 0.0
        for run in self.runs(text):
            if run.shaped:
                total += sum(g.advance for g in self.shape(run.member, run.text, visual=False))
            else:
                member = self.member(run.member)
                widths, default = member.widths, member.default_width
                total += sum(widths.get(32 if c == "\u00a0" else ord(c), default) for c in run.text)
        return total * size * 0.001

    def shape(self, index: int, text: str, *, visual: bool) -> tuple[ShapedGlyph, ...]:
        """HarfBuzz's glyphs for ``text`` in member ``index``, left to right as drawn.

        ``visual``: the text is already in display order (right-to-left stretches reversed,
        as xhtml2pdf hands a line over); those stretches are turned back to be shaped."""
        key = (index, text, visual)
        glyphs = self._shape_cache.get(key)
        if glyphs is None:
            glyphs = tuple(self._shape(index, text, visual))
            if len(self._shape_cache) > 4096:
                self._shape_cache.clear()
            self._shape_cache[key] = glyphs
        return glyphs

    def _shape(self, index: int, text: str, visual: bool) -> list[ShapedGlyph]:
        member = self.member(index)
        out: list[ShapedGlyph] = []
        for piece, rtl in _direction_pieces(text):
            logical = piece[::-1] if (rtl and visual) else piece
            buf = hb.Buffer()
            buf.add_str(logical)
            buf.guess_segment_properties()
            if rtl:
                buf.direction = "rtl"
            hb.shape(member.hb_font, buf, {"kern": True, "liga": True})
            units = member.units
            for info, pos in zip(buf.glyph_infos, buf.glyph_positions, strict=True):
                code = member.char_for_glyph(info.codepoint)
                out.append(ShapedGlyph(chr(code), pos.x_advance * units, pos.x_offset * units,
                                       pos.y_offset * units, member.widths.get(code, member.default_width)))
        return out

    # ---------------------------------------------------------------- drawing

    def splitString(self, text: str, doc, encoding: str = "utf-8"):  # noqa: N802 - ReportLab's name
        """ReportLab's interface, for callers other than the text object: (subset, bytes) per run,
        unshaped. The subset is ``(member, subset)``."""
        out: list[tuple[tuple[int, int], bytes]] = []
        for run in self.runs(text):
            member = self.member(run.member)
            out.extend(((run.member, subset), chunk) for subset, chunk in member.ttf.splitString(run.text, doc))
        return out

    def getSubsetInternalName(self, subset, doc):  # noqa: N802 - ReportLab's name
        index, number = subset
        return self.member(index).ttf.getSubsetInternalName(number, doc)

    def format_text(self, tx: PDFTextObject, text: str) -> str:
        """The PDF operators that show ``text`` (display order) in text object ``tx``."""
        recorder = _recorder.get()
        if recorder is not None and not text.isascii() and MARKS.search(text):
            return recorder(self, tx, text)
        return self.format_runs(tx, text)

    def format_runs(self, tx: PDFTextObject, text: str) -> str:
        """:meth:`format_text` without the planning marks."""
        escape = tx._canvas._escape
        size, out = tx._fontsize, list[str]()
        tail = f"{fp_str(size)} Tf {fp_str(tx._leading)} TL"
        for run in self.runs(text):
            member = self.member(run.member)
            if not run.shaped:
                for key, name, chunk in self._encode(tx, run.member, member, run.text):
                    self._select(tx, out, key, name, tail)
                    out.append(f"({escape(chunk)}) Tj")
                continue
            glyphs = self.shape(run.member, run.text, visual=True)
            out.append(f"/Span <</ActualText {_pdf_text_string(run.text)}>> BDC")
            rise, position = tx._rise, 0
            items: list[float | bytes] = []  # TJ's parts: glyph bytes and position adjustments
            for key, name, chunk in self._encode(tx, run.member, member, "".join(g.code for g in glyphs)):
                if key != tx._curSubset:
                    _flush_tj(out, items, escape)
                    self._select(tx, out, key, name, tail)
                for byte in chunk:
                    glyph = glyphs[position]
                    position += 1
                    if glyph.dy:
                        _flush_tj(out, items, escape)
                        out.append(f"{fp_str(rise + glyph.dy * size * 0.001)} Ts")
                    if glyph.dx:
                        items.append(-glyph.dx)
                    items.append(bytes((byte,)))
                    correction = glyph.width - glyph.advance + glyph.dx
                    if correction:
                        items.append(correction)
                    if glyph.dy:
                        _flush_tj(out, items, escape)
                        out.append(f"{fp_str(rise)} Ts")
            _flush_tj(out, items, escape)
            out.append("EMC")
        return " ".join(out)

    def _encode(self, tx: PDFTextObject, index: int, member: _Member, chars: str) -> Iterator[tuple]:
        """(subset key, font resource name, bytes) for ``chars`` in member ``index``.

        A text object may carry ``frozen_fonts`` (path -> (resource name per subset, character ->
        code)): subsets already written, which a planned layout's fields use when they have every
        character; otherwise the characters go into the document's own subsets."""
        frozen = getattr(tx, "frozen_fonts", None)
        table = frozen.get(member.path) if frozen else None
        if table is not None:
            names, assignments = table
            codes = [assignments.get(32 if c == "\u00a0" else ord(c), -1) for c in chars]
            if -1 not in codes:
                for subset, group in groupby(codes, key=lambda n: n >> 8):
                    yield ("frozen", index, subset), names[subset], bytes(n & 0xFF for n in group)
                return
        doc = tx._canvas._doc
        for subset, chunk in member.ttf.splitString(chars, doc):
            yield (index, subset), lambda subset=subset: member.ttf.getSubsetInternalName(subset, doc), chunk

    @staticmethod
    def _select(tx: PDFTextObject, out: list[str], key, name, tail: str) -> None:
        """Emit the font change when the run's subset is not the current one."""
        if key != tx._curSubset:
            out.append(f"{name() if callable(name) else name} {tail}")
            tx._curSubset = key


def _flush_tj(out: list[str], items: list[float | bytes], escape) -> None:
    """Write the pending glyphs and adjustments of a shaped run as one TJ."""
    if not items:
        return
    parts, pending = [], b""
    for item in items:
        if isinstance(item, bytes):
            pending += item
            continue
        if pending:
            parts.append(f"({escape(pending)})")
            pending = b""
        if abs(item) > 1e-6:
            parts.append(fp_str(item))
    if pending:
        parts.append(f"({escape(pending)})")
    out.append(f"[{' '.join(parts)}] TJ")
    items.clear()


def _direction_pieces(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into right-to-left and left-to-right stretches (spaces go with their neighbours)."""
    pieces: list[tuple[str, bool]] = []
    for match in re.finditer(r"[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff](?:[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff"
                             r"\s\u064b-\u065f]*[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff])?|"
                             r"[^\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]+", text):
        piece = match.group(0)
        pieces.append((piece, _RTL.match(piece) is not None))
    return pieces


def _pdf_text_string(text: str) -> str:
    """``text`` as a PDF text string (UTF-16BE with a byte-order mark, hex)."""
    return "<FEFF" + text.encode("utf-16-be").hex().upper() + ">"


@contextmanager
def recording(recorder: Callable[[FontStack, PDFTextObject, str], str]) -> Iterator[None]:
    """While planning a layout: text carrying :data:`MARKS` is formatted by ``recorder``
    (stack, text object, text) instead; the marks themselves are zero-width meanwhile."""
    token = _recorder.set(recorder)
    try:
        yield
    finally:
        _recorder.reset(token)


def visual(text: str, base_dir: str = "L") -> str:
    """``text`` (logical order) in display order for one line, by xhtml2pdf's UAX #9."""
    return get_display(text, base_dir) if needs_bidi(text, base_dir) else text


# --------------------------------------------------------------------------- registration


def _register_stack(family: str, style: str) -> FontStack:
    name = STACK_NAMES[family] + _STYLE_SUFFIX[style]
    stack = FontStack(name, FAMILIES[family][style])
    if not stack.paths:
        raise RuntimeError(f"no font file found for {name} (ReportLab's Vera is missing)")
    pdfmetrics.registerFont(stack)
    _stacks[name] = stack
    return stack


def register() -> None:
    """Register every stack with ReportLab and map xhtml2pdf's family names to them (once per process).

    After this, a template that says ``font-family: Helvetica`` (or Arial, sans-serif, Times,
    serif, Courier, monospace, ...) prints with the matching stack, bold and italic included."""
    global _registered
    with _lock:
        if _registered:
            return
        install_text_hook()
        for family, styles in FAMILIES.items():
            base = STACK_NAMES[family]
            for style in styles:
                _register_stack(family, style)
            addMapping(base, 0, 0, base)
            addMapping(base, 1, 0, base + "-Bold")
            addMapping(base, 0, 1, base + "-Italic")
            addMapping(base, 1, 1, base + "-BoldItalic")
            for alias in (base.lower(), *FAMILY_ALIASES[family]):
                xhtml2pdf_default.DEFAULT_FONT[alias] = base
            for ps in _PS_NAMES[family]:
                for style, suffixes in _PS_STYLES.items():
                    for suffix in suffixes:
                        xhtml2pdf_default.DEFAULT_FONT[ps + suffix] = base + _STYLE_SUFFIX[style]
        _registered = True


def stack(name: str) -> FontStack:
    """The registered stack called ``name`` (``CertSans``, ``CertSerif-Bold``, ...)."""
    register()
    return _stacks[name]


def coverage(names: Iterable[str] = ("CertSans", "CertSerif", "CertMono")) -> dict[str, list[str]]:
    """Scripts of :data:`SCRIPT_SAMPLES` that some stack in ``names`` would print as blanks:
    ``{stack name: [script, ...]}``, empty lists when every script prints."""
    register()
    return {name: [script for script, sample in SCRIPT_SAMPLES.items() if not _stacks[name].covers(sample)]
            for name in names}


_original_format_text = PDFTextObject._formatText


def _format_text(self: PDFTextObject, text):
    font = pdfmetrics.getFont(self._fontname)
    formatter = getattr(font, "format_text", None)
    if formatter is None:
        return _original_format_text(self, text)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return formatter(self, text)


def install_text_hook() -> None:
    """Let a font with a ``format_text`` method format its own runs in ReportLab's text object."""
    PDFTextObject._formatText = _format_text
